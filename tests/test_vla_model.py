"""VLAModel, its tokenizer, save/load, and the clear errors on bad input."""
import json

import numpy as np
import pytest
import torch

from vla_rl_lib.errors import CheckpointError, ConfigError, IncompatibleError
from vla_rl_lib.vla.model import VLAConfig, VLAModel
from vla_rl_lib.vla.tokenizer import CLS_ID, PAD_ID, SEP_ID, UNK_ID, VOCAB, InstructionTokenizer

TINY = dict(image_size=32, vision_channels=[8, 16, 16], embed_dim=32, hidden_dim=32, text_heads=2)


def images(b=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=g)


# -- tokenizer -----------------------------------------------------------------------------------
def test_tokenizer_is_deterministic_padded_and_framed():
    tok = InstructionTokenizer(max_length=10)
    out = tok(["change to the left lane", "Stop at the line!"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 10) and ids.dtype == torch.long
    assert ids[0, 0] == CLS_ID and ids[0, 6] == SEP_ID and (ids[0, 7:] == PAD_ID).all()
    assert [VOCAB[i] for i in ids[0, 1:6]] == ["change", "to", "the", "left", "lane"]
    assert mask[0].tolist() == [1] * 7 + [0] * 3
    # case and punctuation do not matter; the same text always gives the same ids
    assert torch.equal(tok("stop at the line")["input_ids"][0], ids[1])
    assert torch.equal(InstructionTokenizer(10)(["change to the left lane"])["input_ids"][0], ids[0])
    # left and right differ in exactly one token
    right = tok("change to the right lane")["input_ids"][0]
    assert (right != ids[0]).sum() == 1
    assert tok("frobnicate the lane")["input_ids"][0, 1] == UNK_ID
    assert tok.decode(ids[0]) == "change to the left lane"
    assert torch.equal(tok(b"keep the lane")["input_ids"], tok("keep the lane")["input_ids"])


def test_tokenizer_rejects_empty_and_overlong():
    tok = InstructionTokenizer(max_length=6)
    with pytest.raises(ConfigError, match="empty"):
        tok("   ")
    with pytest.raises(ConfigError, match="empty"):
        tok("?!")
    with pytest.raises(IncompatibleError, match="at most 4"):
        tok("please change to the left lane now")
    with pytest.raises(ConfigError):
        VLAModel(**TINY).tokenize(["keep the lane", ""])


# -- forward -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["film", "cross_attention"])
@pytest.mark.parametrize("head", ["continuous", "tokens"])
def test_forward_shapes(fusion, head):
    torch.manual_seed(0)
    model = VLAModel(fusion=fusion, action_head=head, **TINY)
    ids = model.tokenize(["keep the lane", "change to the left lane", "overtake the car ahead"])
    out = model(images(), ids)
    assert out["predicted_actions"].shape == (3, 2)
    assert out["value"].shape == (3,)
    assert out["predicted_actions"].abs().max() <= 1.0
    if head == "continuous":
        assert out["mean"].shape == (3, 2) and out["log_std"].shape == (3, 2)
        assert torch.equal(out["predicted_actions"], out["mean"])
    else:
        assert out["logits"].shape == (3, 2, 256) and out["log_probs"].shape == (3, 2, 256)
        assert torch.allclose(out["log_probs"].exp().sum(-1), torch.ones(3, 2), atol=1e-5)
        centres = -1 + (2 * out["logits"].argmax(-1).float() + 1) / 256
        assert torch.allclose(out["predicted_actions"], centres)
    # float (B, 3, H, W) in [0, 1] is the same picture as uint8 (B, H, W, 3)
    px = images()
    out2 = model(px.permute(0, 3, 1, 2).float() / 255.0, ids)
    assert torch.allclose(out2["predicted_actions"], out["predicted_actions"], atol=1e-6)
    # the instruction changes the output (language is wired in)
    same = model(images(3), model.tokenize(["keep the lane"] * 3))["features"]
    other = model(images(3), model.tokenize(["stop at the line"] * 3))["features"]
    assert not torch.allclose(same, other)


def test_default_config_and_state_input():
    model = VLAModel()
    assert model.config == VLAConfig() and model.config.image_size == 64
    out = model(images(2, 64), model.tokenize(["keep the lane", "stop at the line"]))
    assert out["predicted_actions"].shape == (2, 2)
    with_state = VLAModel(state_indices=[1, 2], **TINY)
    assert with_state.config.state_dim == 2
    out = with_state(images(2), with_state.tokenize(["keep the lane"] * 2), state=torch.randn(2, 18))
    assert out["predicted_actions"].shape == (2, 2)
    with pytest.raises(IncompatibleError, match="state"):
        with_state(images(2), with_state.tokenize(["keep the lane"] * 2))


def test_config_validation():
    with pytest.raises(ConfigError, match="fusion"):
        VLAConfig(fusion="concat")
    with pytest.raises(ConfigError, match="action_head"):
        VLAConfig(action_head="diffusion")
    with pytest.raises(ConfigError, match="divisible"):
        VLAConfig(image_size=36)


# -- bad input -------------------------------------------------------------------------------------
def test_bad_images_raise_one_clear_error():
    model = VLAModel(**TINY)
    ids = model.tokenize(["keep the lane"] * 2)
    with pytest.raises(IncompatibleError, match=r"\(B, 32, 32, 3\)"):
        model(images(2, 64), ids)  # wrong size
    with pytest.raises(IncompatibleError, match="dtype"):
        model(images(2).to(torch.int32), ids)  # wrong dtype
    with pytest.raises(IncompatibleError, match=r"\[0, 1\]"):
        model(images(2).permute(0, 3, 1, 2).float(), ids)  # float but 0..255
    with pytest.raises(IncompatibleError, match=r"\(B, 3, 32, 32\)"):
        model(images(2).float() / 255, ids)  # float but channels last
    with pytest.raises(IncompatibleError, match="one per image"):
        model(images(3), ids)
    with pytest.raises(IncompatibleError, match="input_ids"):
        model(images(2), torch.full((2, 4), 10_000))


# -- save / load -----------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["continuous", "tokens"])
def test_save_load_round_trip(tmp_path, head):
    torch.manual_seed(1)
    model = VLAModel(action_head=head, fusion="cross_attention", state_indices=[1, 2], **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = model.save_pretrained(tmp_path / "m")
    assert sorted(x.name for x in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = VLAModel.from_pretrained(path)
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    ids = model.tokenize(["overtake the car ahead", "keep the lane", "stop at the line"])
    st = torch.randn(3, 18)
    a, b = model(images(), ids, st), loaded(images(), ids, st)
    assert torch.equal(a["predicted_actions"], b["predicted_actions"]) and torch.equal(a["value"], b["value"])


def test_from_pretrained_bad_folders(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        VLAModel.from_pretrained(tmp_path / "nowhere")
    good = VLAModel(**TINY).save_pretrained(tmp_path / "good")

    missing = tmp_path / "missing_weights"
    missing.mkdir()
    (missing / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        VLAModel.from_pretrained(missing)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="config.json is missing"):
        VLAModel.from_pretrained(no_config)

    # weights that do not fit the config: the error names the file and the tensor
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    cfg = json.loads((good / "config.json").read_text())
    cfg["hidden_dim"] = 48
    (mismatched / "config.json").write_text(json.dumps(cfg))
    (mismatched / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*tensor 'trunk\.0\.weight'"):
        VLAModel.from_pretrained(mismatched)

    other_head = tmp_path / "other_head"
    other_head.mkdir()
    cfg = json.loads((good / "config.json").read_text())
    cfg["action_head"] = "tokens"
    (other_head / "config.json").write_text(json.dumps(cfg))
    (other_head / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="missing tensor|unexpected tensor"):
        VLAModel.from_pretrained(other_head)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((good / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        VLAModel.from_pretrained(corrupt)

    wrong_json = tmp_path / "wrong_json"
    wrong_json.mkdir()
    (wrong_json / "config.json").write_text("{not json")
    (wrong_json / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="JSON"):
        VLAModel.from_pretrained(wrong_json)


def test_pretrained_sentence_encoder_optional():
    pytest.importorskip("sentence_transformers", reason="the optional 'vla' extra (sentence-transformers) is not installed")
    try:
        model = VLAModel(text_encoder="minilm", **TINY)
    except CheckpointError as exc:
        pytest.skip(f"all-MiniLM-L6-v2 weights are not available offline: {exc}")
    out = model(images(2), model.tokenize(["keep the lane", "stop at the line"]))
    assert out["predicted_actions"].shape == (2, 2)
    assert not any(k.startswith("text._st") for k in model.state_dict())
