// The imgedit playground: a page that edits images through the server's public API, from the browser.
//
// It doubles as an example of calling the API from JavaScript:
//   * GET  ../v1/models        lists the served models and their LoRAs (and tells whether an API key is needed: 401);
//   * POST ../v1/images/edits  with multipart form data and stream=true answers with server-sent
//     events: "image_edit.partial_image" previews, then one "image_edit.completed" per image.
// EventSource can only GET, so the stream is read with fetch() and parsed here.
// Errors come back in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and the page
// shows error.message as it is. No library, no build step; URLs are relative to the page, so the
// page also works behind a proxy that adds a path prefix.
"use strict";

(() => {
  const API = new URL("../v1/", document.baseURI);
  const SEEDS_HEADER = "x-imgedit-seeds";
  const SEED_RANGE = 1n << 64n; // seeds are 0 .. 2^64 - 1; image i of a request uses seed + i
  const PAINT = "#ff2d55"; // painted mask strokes; the canvas is shown translucent over the image
  const MEDIA_TYPES = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };
  const JOB_POLL_MS = 500; // how often a background job is asked how far it is

  const $ = (id) => document.getElementById(id);
  const ui = {
    modelStatus: $("model-status"),
    keyForm: $("key-form"),
    apiKey: $("api-key"),
    keyError: $("key-error"),
    form: $("edit-form"),
    dropZone: $("drop-zone"),
    images: $("images"),
    imageList: $("image-list"),
    maskStage: $("mask-stage"),
    maskBase: $("mask-base"),
    maskCanvas: $("mask-canvas"),
    brushSize: $("brush-size"),
    maskFile: $("mask-file"),
    clearMask: $("clear-mask"),
    prompt: $("prompt"),
    negativePrompt: $("negative-prompt"),
    size: $("size"),
    n: $("n"),
    steps: $("steps"),
    guidance: $("guidance"),
    seed: $("seed"),
    outputFormat: $("output-format"),
    model: $("model"),
    lora: $("lora"),
    partialImages: $("partial-images"),
    background: $("background"),
    editButton: $("edit-button"),
    cancelButton: $("cancel-button"),
    progress: $("progress"),
    runStatus: $("run-status"),
    elapsed: $("elapsed"),
    error: $("error"),
    previews: $("previews"),
    results: $("results"),
  };
  const maskContext = ui.maskCanvas.getContext("2d");

  const state = {
    apiKey: null, // kept in this variable only: never in storage, gone when the tab goes
    cards: [],
    images: [], // File objects, in the order they are sent
    thumbnailUrls: [],
    runUrls: [], // object URLs of the last run's previews and results
    maskBaseUrl: null,
    maskPainted: false,
    stroke: null, // the last point of the stroke being painted
    controller: null, // aborts the running edit
    jobId: null, // the background job of the running edit, cancelled with it
  };

  // ---- Talking to the API ---------------------------------------------------------------------

  function authorization() {
    return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
  }

  // The API's own words for a failed response: error.message of the OpenAI error body.
  async function apiErrorMessage(response) {
    const text = await response.text();
    try {
      const message = JSON.parse(text).error.message;
      if (typeof message === "string") return message;
    } catch {
      // not an OpenAI error body: fall through
    }
    return `HTTP ${response.status}${text ? `: ${text}` : ""}`;
  }

  async function loadModels() {
    ui.modelStatus.textContent = "Asking the server which model it serves…";
    let response;
    try {
      response = await fetch(new URL("models", API), { headers: authorization() });
    } catch (error) {
      ui.modelStatus.textContent = `Could not reach the server: ${error.message}`;
      return;
    }
    if (response.status === 401) {
      askForKey(await apiErrorMessage(response));
      ui.modelStatus.textContent = "This server needs an API key.";
      return;
    }
    if (!response.ok) {
      ui.modelStatus.textContent = `Could not list the models: ${await apiErrorMessage(response)}`;
      return;
    }
    state.cards = (await response.json()).data;
    // LoRA adapters are listed as models on top of the served model they belong to (their parent).
    const models = state.cards.filter((card) => !card.parent).map((card) => card.id);
    const adapters = state.cards.filter((card) => card.parent).map((card) => card.id);
    // The first is the server's default; the others are there when it serves several (IMGEDIT_MODELS).
    ui.model.replaceChildren(...models.map((name) => new Option(name, name)));
    ui.model.disabled = models.length < 2;
    showLoras();
    ui.keyForm.hidden = true;
    ui.keyError.textContent = "";
    ui.apiKey.value = "";
    ui.modelStatus.textContent =
      `Model: ${models.join(", ") || "none"}` + (adapters.length ? `; LoRA adapters: ${adapters.join(", ")}` : "");
  }

  // The LoRA choices of the chosen model: each adapter belongs to one.
  function showLoras() {
    const adapters = state.cards.filter((card) => card.parent && card.parent === ui.model.value);
    ui.lora.replaceChildren(new Option("None", ""), ...adapters.map((card) => new Option(card.id, card.id)));
    ui.lora.disabled = adapters.length === 0;
  }

  function askForKey(message) {
    const wasHidden = ui.keyForm.hidden;
    ui.keyForm.hidden = false;
    ui.keyError.textContent = message;
    if (wasHidden) ui.apiKey.focus();
  }

  // Server-sent events from a response body: yields {event, data} for each complete event.
  async function* serverSentEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = "";
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return; // an unfinished event at the end is dropped, as EventSource does
        buffer += value;
        // A lone "\r" at the end may be the first half of "\r\n": keep it for the next chunk.
        const lines = buffer.split(/\r\n|\n|\r(?=.)/s);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (data.length) yield { event: event || "message", data: data.join("\n") };
            event = "";
            data = [];
            continue;
          }
          if (line.startsWith(":")) continue; // a comment
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
          if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
          if (field === "event") event = fieldValue;
          else if (field === "data") data.push(fieldValue);
        }
      }
    } finally {
      reader.cancel().catch(() => {}); // the caller stopped early (an error event): close the connection
    }
  }

  // ---- Input images ---------------------------------------------------------------------------

  function addImages(files) {
    if (!files.length) return;
    const firstBefore = state.images[0];
    state.images.push(...files);
    renderImages(firstBefore);
  }

  function removeImage(index) {
    const firstBefore = state.images[0];
    state.images.splice(index, 1);
    renderImages(firstBefore);
  }

  function renderImages(firstBefore) {
    state.thumbnailUrls.forEach((url) => URL.revokeObjectURL(url));
    state.thumbnailUrls = [];
    ui.imageList.replaceChildren(
      ...state.images.map((file, index) => {
        const url = URL.createObjectURL(file);
        state.thumbnailUrls.push(url);
        const item = document.createElement("li");
        const thumbnail = document.createElement("img");
        thumbnail.src = url;
        thumbnail.alt = "";
        const name = document.createElement("span");
        name.textContent = `${index + 1}. ${file.name || "image"}`;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", `Remove image ${index + 1} (${file.name || "image"})`);
        remove.addEventListener("click", () => removeImage(index));
        item.append(thumbnail, name, remove);
        return item;
      }),
    );
    if (state.images[0] !== firstBefore) showMaskBase(state.images[0]);
  }

  // ---- The mask -------------------------------------------------------------------------------
  // The canvas has the first image's own pixel size and is stretched over its preview. Painted
  // pixels are opaque on the canvas; on submit they become the transparent (to-be-edited) pixels of
  // an otherwise opaque PNG, which is what OpenAI's "mask" means.

  function showMaskBase(file) {
    if (state.maskBaseUrl) URL.revokeObjectURL(state.maskBaseUrl);
    state.maskBaseUrl = null;
    clearMask();
    if (!file) {
      ui.maskStage.hidden = true;
      ui.maskBase.removeAttribute("src");
      return;
    }
    state.maskBaseUrl = URL.createObjectURL(file);
    ui.maskBase.src = state.maskBaseUrl;
  }

  ui.maskBase.addEventListener("load", () => {
    ui.maskCanvas.width = ui.maskBase.naturalWidth;
    ui.maskCanvas.height = ui.maskBase.naturalHeight;
    clearMask();
    ui.maskStage.hidden = false;
  });
  ui.maskBase.addEventListener("error", () => {
    // Not an image this browser can show; the server may still read it, but there is nothing to paint on.
    ui.maskStage.hidden = true;
  });

  function clearMask() {
    maskContext.clearRect(0, 0, ui.maskCanvas.width, ui.maskCanvas.height);
    state.maskPainted = false;
    ui.maskFile.value = "";
  }

  function canvasPoint(event) {
    const box = ui.maskCanvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * ui.maskCanvas.width) / box.width,
      y: ((event.clientY - box.top) * ui.maskCanvas.height) / box.height,
      // the brush size is in screen pixels, whatever the image's scale on screen
      width: (Number(ui.brushSize.value) * ui.maskCanvas.width) / box.width,
    };
  }

  function paintTo(point) {
    const from = state.stroke ?? point;
    maskContext.strokeStyle = PAINT;
    maskContext.lineCap = "round";
    maskContext.lineJoin = "round";
    maskContext.lineWidth = point.width;
    maskContext.beginPath();
    maskContext.moveTo(from.x, from.y);
    maskContext.lineTo(point.x, point.y);
    maskContext.stroke();
    state.stroke = point;
    state.maskPainted = true;
  }

  ui.maskCanvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    ui.maskCanvas.setPointerCapture(event.pointerId);
    state.stroke = null;
    paintTo(canvasPoint(event));
  });
  ui.maskCanvas.addEventListener("pointermove", (event) => {
    if (state.stroke) paintTo(canvasPoint(event));
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    ui.maskCanvas.addEventListener(type, () => {
      state.stroke = null;
    });
  }

  async function decodeImage(blob) {
    const url = URL.createObjectURL(blob);
    try {
      const image = new Image();
      image.src = url;
      await image.decode();
      return image;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  // An uploaded mask is shown as paint (its transparent pixels painted), so it can be painted on further.
  async function loadMaskFile(file) {
    clearError();
    if (!state.images.length || ui.maskStage.hidden) {
      showError("Choose an image first: the mask is drawn over the first image.");
      ui.maskFile.value = "";
      return;
    }
    let mask;
    try {
      mask = await decodeImage(file);
    } catch {
      showError("This browser cannot read that mask file.");
      ui.maskFile.value = "";
      return;
    }
    const { width, height } = ui.maskCanvas;
    maskContext.save();
    maskContext.clearRect(0, 0, width, height);
    maskContext.fillStyle = PAINT;
    maskContext.fillRect(0, 0, width, height);
    maskContext.globalCompositeOperation = "destination-out";
    maskContext.drawImage(mask, 0, 0, width, height);
    maskContext.restore();
    state.maskPainted = true;
  }

  function maskPng() {
    const { width, height } = ui.maskCanvas;
    const mask = document.createElement("canvas");
    mask.width = width;
    mask.height = height;
    const context = mask.getContext("2d");
    context.fillStyle = "#000";
    context.fillRect(0, 0, width, height);
    context.globalCompositeOperation = "destination-out"; // painted pixels punch holes: alpha 0
    context.drawImage(ui.maskCanvas, 0, 0);
    return new Promise((resolve, reject) => {
      mask.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("Could not encode the mask."))), "image/png");
    });
  }

  // ---- Running an edit ------------------------------------------------------------------------

  function randomSeed() {
    return crypto.getRandomValues(new BigUint64Array(1))[0].toString();
  }

  // The seed of each image: the server lists them in a header; otherwise image i has seed + i.
  function seedsOf(response, seed, count) {
    const header = response.headers.get(SEEDS_HEADER);
    if (header) return header.split(",").map((each) => each.trim());
    return Array.from({ length: count }, (_, index) => ((BigInt(seed) + BigInt(index)) % SEED_RANGE).toString());
  }

  function base64Blob(base64, type) {
    const binary = atob(base64);
    const bytes = new Uint8Array(binary.length);
    for (let index = 0; index < binary.length; index += 1) bytes[index] = binary.charCodeAt(index);
    return new Blob([bytes], { type });
  }

  function blobUrl(base64, format) {
    const url = URL.createObjectURL(base64Blob(base64, MEDIA_TYPES[format] ?? "application/octet-stream"));
    state.runUrls.push(url);
    return url;
  }

  function seconds(since) {
    return `${((performance.now() - since) / 1000).toFixed(1)} s`;
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.textContent = "";
    ui.error.hidden = true;
  }

  function addField(form, name, value) {
    const text = value.trim();
    if (text !== "") form.append(name, text);
  }

  async function buildForm(seed) {
    const form = new FormData();
    if (ui.model.value) form.append("model", ui.model.value);
    form.append("prompt", ui.prompt.value);
    for (const file of state.images) form.append("image", file, file.name || "image");
    if (state.maskPainted) form.append("mask", await maskPng(), "mask.png");
    if (ui.negativePrompt.value.trim() !== "") form.append("negative_prompt", ui.negativePrompt.value);
    addField(form, "size", ui.size.value);
    addField(form, "n", ui.n.value);
    addField(form, "num_inference_steps", ui.steps.value);
    addField(form, "guidance_scale", ui.guidance.value);
    form.append("seed", seed);
    form.append("output_format", ui.outputFormat.value);
    if (ui.lora.value) form.append("lora", ui.lora.value);
    if (ui.background.checked) {
      form.append("response_format", "url");
    } else {
      form.append("stream", "true");
      form.append("partial_images", ui.partialImages.value);
    }
    return form;
  }

  // Progress counts the events the stream will carry: previews (at most steps - 1 of them per
  // image, when the steps are known) and one completed event per image.
  function expectedEvents(count) {
    const previews = Number(ui.partialImages.value);
    const steps = Number.parseInt(ui.steps.value, 10);
    const perImage = Number.isInteger(steps) ? Math.min(previews, Math.max(steps - 1, 0)) : previews;
    return Math.max(1, count) * (perImage + 1);
  }

  function advance() {
    const next = ui.progress.value + 1;
    if (next > ui.progress.max) ui.progress.max = next; // more events than expected: keep counting
    ui.progress.value = next;
  }

  function addPreview(payload) {
    const item = document.createElement("li");
    const image = document.createElement("img");
    const number = payload.partial_image_index + 1;
    image.src = blobUrl(payload.b64_json, payload.output_format);
    image.alt = `Preview ${number}`;
    const caption = document.createElement("span");
    caption.textContent = `Preview ${number}`;
    item.append(image, caption);
    ui.previews.append(item);
  }

  function addResult(payload, number, count, seed, took) {
    const format = payload.output_format;
    const url = payload.url ?? blobUrl(payload.b64_json, format);
    const item = document.createElement("li");
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = url;
    image.alt = `Result ${number} of ${count}, seed ${seed}`;
    const caption = document.createElement("figcaption");
    const details = document.createElement("span");
    details.className = "result-details";
    details.textContent = `Image ${number} of ${count} · ${payload.size} · seed ${seed} · ${took}`;
    const link = document.createElement("a");
    link.href = url;
    link.download = `imgedit-${seed}.${format === "jpeg" ? "jpg" : format}`;
    link.textContent = `Download image ${number} (${format.toUpperCase()})`;
    caption.append(details, " ", link);
    if (payload.url) {
      const opener = document.createElement("a");
      opener.href = payload.url;
      opener.target = "_blank";
      opener.rel = "noopener";
      opener.textContent = `Open link ${number}`;
      caption.append(" ", opener);
    }
    figure.append(image, caption);
    item.append(figure);
    ui.results.append(item);
  }

  function startRun(count) {
    state.runUrls.forEach((url) => URL.revokeObjectURL(url));
    state.runUrls = [];
    ui.previews.replaceChildren();
    ui.results.replaceChildren();
    clearError();
    ui.progress.max = expectedEvents(count);
    ui.progress.value = 0;
    ui.editButton.disabled = true;
    ui.cancelButton.disabled = false;
    ui.results.setAttribute("aria-busy", "true");
    state.controller = new AbortController();
    const started = performance.now();
    ui.elapsed.textContent = "";
    const timer = setInterval(() => {
      ui.elapsed.textContent = `(${seconds(started)})`;
    }, 100);
    return { started, timer };
  }

  function endRun(run, message) {
    clearInterval(run.timer);
    ui.elapsed.textContent = "";
    ui.runStatus.textContent = message;
    ui.editButton.disabled = false;
    ui.cancelButton.disabled = true;
    ui.results.removeAttribute("aria-busy");
    state.controller = null;
  }

  async function edit() {
    const seedText = ui.seed.value.trim();
    const seed = seedText === "" ? randomSeed() : seedText;
    const count = Number.parseInt(ui.n.value, 10) || 1;
    const run = startRun(count);
    ui.runStatus.textContent = "Sending the request…";
    try {
      const response = await fetch(new URL("images/edits", API), {
        method: "POST",
        headers: ui.background.checked
          ? { ...authorization(), Prefer: "respond-async" }
          : { ...authorization(), Accept: "text/event-stream" },
        body: await buildForm(seed),
        signal: state.controller.signal,
      });
      if (!response.ok) {
        const message = await apiErrorMessage(response);
        if (response.status === 401) askForKey(message);
        showError(message);
        endRun(run, "The server refused the edit.");
        return;
      }
      const seeds = seedsOf(response, seed, count);
      if (ui.background.checked) {
        await followJob(await response.json(), run, seeds);
        return;
      }
      ui.runStatus.textContent = "Editing…";
      let completed = 0;
      for await (const { event, data } of serverSentEvents(response.body)) {
        const payload = JSON.parse(data);
        if (payload.error) {
          showError(payload.error.message);
          endRun(run, "The edit failed.");
          return;
        }
        const type = payload.type ?? event;
        if (type === "image_edit.partial_image") {
          addPreview(payload);
          advance();
          ui.runStatus.textContent = `Preview ${payload.partial_image_index + 1} received.`;
        } else if (type === "image_edit.completed") {
          completed += 1;
          const imageSeed = seeds[completed - 1] ?? "unknown";
          addResult(payload, completed, seeds.length, imageSeed, seconds(run.started));
          advance();
          ui.runStatus.textContent = `Image ${completed} of ${seeds.length} done.`;
        }
      }
      ui.progress.value = ui.progress.max;
      if (completed < seeds.length) {
        showError(`The stream ended after ${completed} of ${seeds.length} images.`);
        endRun(run, "The edit stopped early.");
        return;
      }
      endRun(run, `Done: ${completed} ${completed === 1 ? "image" : "images"} in ${seconds(run.started)}.`);
    } catch (error) {
      if (error.name === "AbortError") {
        endRun(run, "Cancelled.");
      } else {
        showError(`The request failed: ${error.message}`);
        endRun(run, "The edit failed.");
      }
    }
  }

  // A background job: polled until it ends, its progress (0 to 100) on the bar; Cancel cancels the job.
  async function followJob(job, run, seeds) {
    state.jobId = job.id;
    ui.progress.max = 100;
    const jobUrl = new URL(`images/edits/${job.id}`, API);
    try {
      while (job.status === "queued" || job.status === "in_progress") {
        ui.progress.value = job.progress;
        ui.runStatus.textContent = job.status === "queued" ? `Job ${job.id} is queued…` : `Job ${job.id}: ${job.progress} %`;
        await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
        const response = await fetch(jobUrl, { headers: authorization(), signal: state.controller.signal });
        if (!response.ok) throw new Error(await apiErrorMessage(response));
        job = await response.json();
      }
    } finally {
      state.jobId = null;
    }
    ui.progress.value = 100;
    if (job.status !== "completed") {
      if (job.error) showError(job.error.message);
      endRun(run, job.status === "cancelled" ? "Cancelled." : "The edit failed.");
      return;
    }
    job.data.forEach((item, index) => {
      addResult({ ...item, output_format: job.output_format, size: job.size }, index + 1, job.data.length, seeds[index] ?? "unknown", seconds(run.started));
    });
    endRun(run, `Done: ${job.data.length} ${job.data.length === 1 ? "image" : "images"} in ${seconds(run.started)}.`);
  }

  function cancel() {
    if (state.jobId) {
      fetch(new URL(`images/edits/${state.jobId}/cancel`, API), { method: "POST", headers: authorization() });
    }
    state.controller?.abort();
  }

  // ---- Wiring ---------------------------------------------------------------------------------

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = ui.apiKey.value.trim() || null;
    loadModels();
  });

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.controller) edit();
  });
  ui.cancelButton.addEventListener("click", cancel);
  ui.model.addEventListener("change", showLoras);

  ui.images.addEventListener("change", () => {
    addImages([...ui.images.files]);
    ui.images.value = ""; // the same file can be added again
  });
  ui.maskFile.addEventListener("change", () => {
    if (ui.maskFile.files.length) loadMaskFile(ui.maskFile.files[0]);
  });
  ui.clearMask.addEventListener("click", clearMask);

  const carriesFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  ui.dropZone.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    ui.dropZone.classList.add("dragging");
  });
  ui.dropZone.addEventListener("dragleave", () => ui.dropZone.classList.remove("dragging"));
  ui.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.dropZone.classList.remove("dragging");
    addImages([...event.dataTransfer.files]);
  });
  // A file dropped beside the drop zone would make the browser leave the page to show it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (carriesFiles(event)) event.preventDefault();
    });
  }

  loadModels();
})();
