"""The grounded conv stem: keypoints, shifts, FiLM, and that it learns to find the object a word names."""

import pytest
import torch
from torch import nn

from vla.models.config import GroundingConfig
from vla.models.grounding import GroundedConvStem, Grounding, coordinate_grid, spatial_softmax


def test_spatial_softmax_finds_a_peak():
    features = torch.zeros(1, 2, 8, 8)
    features[0, 0, 2, 5] = 50.0  # row 2, column 5
    features[0, 1, 7, 0] = 50.0
    keypoints = spatial_softmax(features)[0]
    grid = coordinate_grid(8, 8, torch.device("cpu"))
    torch.testing.assert_close(keypoints[0], grid[:, 2, 5], atol=1e-4, rtol=0)
    torch.testing.assert_close(keypoints[1], grid[:, 7, 0], atol=1e-4, rtol=0)
    assert keypoints[0, 0] > 0 > keypoints[0, 1]  # x right of centre, y above it


def test_random_shift_translates_within_the_pad():
    stem = GroundedConvStem(4, 4, 8, 8, shift_pad=3)
    image = torch.zeros(16, 3, 20, 20)
    image[:, :, 10, 10] = 1.0
    torch.manual_seed(0)
    shifted = stem.shift(image)
    assert shifted.shape == image.shape
    rows, cols = torch.nonzero(shifted[:, 0]).T[1:]
    assert len(rows) == 16 and (rows - 10).abs().max() <= 3 and (cols - 10).abs().max() <= 3
    assert len({(r.item(), c.item()) for r, c in zip(rows, cols, strict=True)}) > 1  # shifts differ per image


def scenes(n: int, generator: torch.Generator, size: int = 24):
    """Three coloured 4x4 squares (red, green, blue) at random places; the 'word' is a colour index."""
    images = torch.full((n, size, size, 3), 200, dtype=torch.uint8)
    positions = torch.randint(2, size - 6, (n, 3, 2), generator=generator)
    for i in range(n):
        for colour in range(3):
            r, c = positions[i, colour].tolist()
            images[i, r : r + 4, c : c + 4] = 30
            images[i, r : r + 4, c : c + 4, colour] = 230
    words = torch.randint(0, 3, (n,), generator=generator)
    target = (positions[torch.arange(n), words].float() + 2) / size * 2 - 1  # the named square's centre
    return images, words, target


@pytest.mark.parametrize("keypoint_scale", [None, 4.0])
def test_stem_learns_to_locate_the_named_object(keypoint_scale):
    """Language decides the answer: only FiLM can tell the readout which square's position to report."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    stem = GroundedConvStem(16, 4, 32, 8, shift_pad=0, keypoint_scale=keypoint_scale)
    words_embed, readout = nn.Embedding(3, 8), nn.Linear(32, 2)
    params = [*stem.parameters(), *words_embed.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    images, words, target = scenes(256, generator)
    for _ in range(300):
        idx = torch.randint(0, 256, (32,), generator=generator)
        tokens = stem(images[idx], words_embed(words[idx]))
        loss = (readout(tokens[:, -1]) - target[idx]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stem.eval()
    images, words, target = scenes(128, generator)  # new scenes
    with torch.no_grad():
        error = (readout(stem(images, words_embed(words))[:, -1]) - target).pow(2).mean().item()
        wrong_word = (
            (readout(stem(images, words_embed((words + 1) % 3))[:, -1]) - target).pow(2).mean().item()
        )
    baseline = (target - target.mean(0)).pow(2).mean().item()  # a readout that ignores the image
    assert error < 0.2 * baseline, (error, baseline)
    assert wrong_word > 3 * error, (wrong_word, error)  # another word points at another square


def test_keypoint_scale_is_a_learned_multiplier_on_the_keypoint_logits():
    """Off (null) there is no parameter, as in checkpoints from before it; on, it starts at the given value,
    sharpens every keypoint map, and at exp(0) = 1 gives back the unscaled stem's output exactly."""
    torch.manual_seed(0)
    plain, scaled = (
        GroundedConvStem(16, 4, 32, 8, shift_pad=0),
        GroundedConvStem(16, 4, 32, 8, keypoint_scale=4.0),
    )
    assert plain.log_keypoint_scale is None and "log_keypoint_scale" not in plain.state_dict()
    missing = scaled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["log_keypoint_scale"] and scaled.log_keypoint_scale.requires_grad
    assert scaled.log_keypoint_scale.exp().item() == pytest.approx(4.0)
    images, words, _ = scenes(8, torch.Generator().manual_seed(1))
    text = torch.randn(8, 8)
    plain.eval(), scaled.eval()
    with torch.no_grad():
        assert not torch.allclose(plain(images, text), scaled(images, text), atol=1e-3)
        scaled.log_keypoint_scale.zero_()
        torch.testing.assert_close(plain(images, text), scaled(images, text))
    config = GroundingConfig(enabled=True, keypoint_scale=2.0)
    grounding = Grounding(config, 32, ["top"], 4, state_dim=4, target_names=[], horizon=8, action_dim=2)
    assert grounding.stem.log_keypoint_scale.exp().item() == pytest.approx(2.0)


def two_word_scenes(n: int, generator: torch.Generator):
    """`scenes` plus a second, different colour: the instruction is the word pair (named, other)."""
    images, words, target = scenes(n, generator)
    other = (words + torch.randint(1, 3, (n,), generator=generator)) % 3
    return images, torch.stack([words, other], 1), target


class TwoWordLocator(nn.Module):
    """Stem + a readout of the named square's position; each instruction token = word + its place."""

    def __init__(self, text: str):
        super().__init__()
        self.stem = GroundedConvStem(16, 4, 32, 8, shift_pad=0, text=text)
        self.words, self.places, self.readout = nn.Embedding(3, 8), nn.Embedding(2, 8), nn.Linear(32, 2)

    def forward(self, images: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        tokens = self.words(words) + self.places.weight
        return self.readout(self.stem(images, tokens, torch.ones(words.shape, dtype=torch.bool))[:, -1])


def test_attention_reading_binds_words_to_their_place_in_the_instruction():
    """'red ... green' and 'green ... red' name different squares. Their mean-pooled token embeddings are
    equal, so only the stem that reads the tokens with attention can tell which square is meant."""
    errors = {}
    for text in ("mean", "attention"):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        locator = TwoWordLocator(text)
        optimizer = torch.optim.Adam(locator.parameters(), lr=3e-3)
        images, words, target = two_word_scenes(256, generator)
        for _ in range(300):
            idx = torch.randint(0, 256, (32,), generator=generator)
            loss = (locator(images[idx], words[idx]) - target[idx]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        locator.eval()
        images, words, target = two_word_scenes(32, generator)
        with torch.no_grad():
            errors[text] = (locator(images, words) - target).pow(2).mean().item()
            swapped = (locator(images, words.flip(1)) - target).pow(2).mean().item()
        baseline = (target - target.mean(0)).pow(2).mean().item()
        if text == "attention":
            assert errors[text] < 0.25 * baseline, (errors, baseline)
            # the same words, other order: the other square
            assert swapped > 3 * errors[text], (
                swapped,
                errors,
            )
    assert errors["mean"] > 2 * errors["attention"], errors


def test_attention_reading_stem_needs_the_tokens():
    stem = GroundedConvStem(4, 4, 8, 8, text="attention")
    with pytest.raises(ValueError, match="instruction's tokens"):
        stem(torch.zeros(1, 16, 16, 3, dtype=torch.uint8), torch.zeros(1, 8))
    with pytest.raises(ValueError, match="'mean' or 'attention'"):
        GroundedConvStem(4, 4, 8, 8, text="max")


def test_mean_pooled_minilm_blurs_which_colour_goes_with_which_noun():
    """Why `grounding.text=attention` exists: the real MiniLM's mean-pooled instruction barely changes when
    the block and pad colours trade places (cosine 0.997), less than when only the pad changes (0.93)."""
    from vla.models.backbone import TextEncoder
    from vla.models.config import BackboneConfig
    from vla.models.grounding import masked_mean

    encoder = TextEncoder(BackboneConfig(text_path="minilm"))
    texts = [
        "push the red block onto the blue pad",
        "push the blue block onto the red pad",
        "push the red block onto the green pad",
    ]
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(masked_mean(*encoder(texts, torch.device("cpu"))), dim=-1)
    swapped, other_pad = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert swapped > 0.99 and other_pad < 0.96, (swapped, other_pad)
