"""Pure tier: the soft-prompt splice."""
import pytest
import torch

from e2llm.splice import IGNORE_INDEX, Soft, Tokens, splice


@pytest.fixture
def embed():
    torch.manual_seed(0)
    return torch.nn.Embedding(50, 4)


def test_layout_labels_and_masks(embed):
    soft = torch.randn(3, 4)
    out = splice([[Tokens([1, 2]), Soft(soft), Tokens([5]), Tokens([7, 8], target=True)]], embed, pad_left=False)
    assert out.inputs_embeds.shape == (1, 8, 4)
    torch.testing.assert_close(out.inputs_embeds[0, 2:5], soft)
    torch.testing.assert_close(out.inputs_embeds[0, :2], embed(torch.tensor([1, 2])))
    assert out.labels[0].tolist() == [IGNORE_INDEX] * 6 + [7, 8]
    assert out.soft_mask[0].tolist() == [False, False, True, True, True, False, False, False]
    assert out.token_ids[0].tolist() == [1, 2, -1, -1, -1, 5, 7, 8]  # what decoding drafts from
    assert out.attention_mask.tolist() == [[1] * 8]
    assert out.position_ids.tolist() == [list(range(8))]


@pytest.mark.parametrize("pad_left", [True, False])
def test_padding_side(embed, pad_left):
    a = [Tokens([1, 2, 3])]
    b = [Tokens([4]), Soft(torch.ones(1, 4))]
    out = splice([a, b], embed, pad_left=pad_left)
    assert out.inputs_embeds.shape == (2, 3, 4)
    mask = out.attention_mask[1].tolist()
    assert mask == ([0, 1, 1] if pad_left else [1, 1, 0])
    real = out.inputs_embeds[1][torch.tensor(mask, dtype=torch.bool)]
    torch.testing.assert_close(real, torch.cat([embed(torch.tensor([4])), torch.ones(1, 4)]))
    assert out.position_ids[1][torch.tensor(mask, dtype=torch.bool)].tolist() == [0, 1]
    assert (out.labels[1][torch.tensor(mask) == 0] == IGNORE_INDEX).all()
    assert out.token_ids[1].tolist() == ([-1, 4, -1] if pad_left else [4, -1, -1])


def test_gradients_flow_into_soft_vectors(embed):
    soft = torch.randn(2, 4, requires_grad=True)
    out = splice([[Tokens([1]), Soft(soft)]], embed)
    out.inputs_embeds.sum().backward()
    assert soft.grad is not None and torch.all(soft.grad == 1)


def test_empty_sample_is_an_error(embed):
    with pytest.raises(ValueError):
        splice([[Tokens([])]], embed)


def test_soft_prompt_spread_tells_a_collapsed_adapter():
    from e2llm.softprompts import soft_prompt_spread

    g = torch.Generator().manual_seed(0)
    same = torch.randn(1, 1, 16, generator=g).expand(10, 1, 16)  # every chunk the same vector
    assert soft_prompt_spread(same) == pytest.approx(0.0, abs=1e-6)
    centred = torch.randn(4000, 2, 16, generator=g)  # no shared part at all
    assert soft_prompt_spread(centred) == pytest.approx(1.0, abs=0.01)
    shared = torch.randn(1, 2, 16, generator=g)
    mixed = shared * 3 + torch.randn(500, 2, 16, generator=g)  # a shared offset 3x the content's scale
    expect = 32 / (32 + 9 * shared.pow(2).sum().item())  # content energy / (content + offset energy)
    assert soft_prompt_spread(mixed) == pytest.approx(expect, rel=0.1)
    with pytest.raises(ValueError, match="at least two chunks"):
        soft_prompt_spread(shared)
