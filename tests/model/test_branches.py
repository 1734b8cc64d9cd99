"""The pieces that split guidance over two groups of ranks, without a process group (the ranks: tests/ranks)."""

from __future__ import annotations

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from imgedit.model.branches import UnconditionalArguments, _cut, prediction_of, with_prediction


def test_the_unconditional_arguments_keep_the_branchs_own_and_take_each_steps_own():
    latents, embeds, negative = torch.ones(1, 4, 2), torch.ones(1, 3, 2), torch.zeros(1, 5, 2)
    first_step = {"hidden_states": latents, "timestep": torch.tensor([0.9]), "encoder_hidden_states": embeds}
    unconditional = {**first_step, "timestep": torch.tensor([0.9]), "encoder_hidden_states": negative}
    learnt = UnconditionalArguments.learn(first_step, unconditional)
    assert learnt.shared == {"hidden_states", "timestep"}  # equal by value, even as another tensor
    later = {"hidden_states": latents * 2, "timestep": torch.tensor([0.5]), "encoder_hidden_states": embeds}
    arguments = learnt.for_step(later)
    assert arguments["hidden_states"] is later["hidden_states"] and arguments["timestep"] is later["timestep"]
    assert arguments["encoder_hidden_states"] is negative


def test_arguments_equal_in_shape_only_or_nested_are_told_apart():
    mask, other = torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool)
    first = {"mask": mask, "shapes": [[(1, 4, 4)]], "options": {"scale": 1.0}, "lens": [3]}
    second = {"mask": other, "shapes": [[(1, 4, 4)]], "options": {"scale": 1.0}, "lens": [5]}
    assert UnconditionalArguments.learn(first, second).shared == {"shapes", "options"}


def test_a_batch_is_cut_wherever_it_is_the_first_dimension():
    sample = torch.arange(3 * 2).reshape(3, 2)
    arguments = {"sample": sample, "timestep": torch.tensor(5), "added": {"time_ids": torch.ones(3, 6)}, "n": 3}
    cut = _cut(arguments, 3, slice(0, 2))
    assert torch.equal(cut["sample"], sample[:2]) and cut["timestep"].dim() == 0
    assert cut["added"]["time_ids"].shape == (2, 6) and cut["n"] == 3


def test_a_prediction_goes_back_in_the_shape_the_denoiser_returned():
    prediction, other = torch.ones(2), torch.zeros(2)
    assert with_prediction(prediction, other) is other
    assert with_prediction((prediction, "extra"), other) == (other, "extra")
    output = with_prediction(Transformer2DModelOutput(sample=prediction), other)
    assert isinstance(output, Transformer2DModelOutput) and prediction_of(output) is other
