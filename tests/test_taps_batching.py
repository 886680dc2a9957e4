"""Taps read what each layer's attention sublayer adds to the residual stream; batches are left-padded with the
answer right-aligned."""

from __future__ import annotations

import pytest
import torch

from ia2.errors import IA2Error
from ia2.model import forward_pass
from ia2.model.forward_pass import forward, make_batch
from ia2.model.taps import Tap, layer_modules
from ia2.teacher import targets


def _batch_for(tokenizer, texts, answers):
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    answer_ids = [tokenizer(t + a)["input_ids"][len(p) :] for t, a, p in zip(texts, answers, prompts)]
    return prompts, answer_ids


TEXTS = ["Question: is the cat big?\nAnswer:", "Question: is the sad happy horse quiet?\nAnswer:", "Answer:"]
ANSWERS = [" yes", " yes please", " no maybe long"]


def test_tap_finds_one_attention_module_per_layer(loaded, arch):
    model, _ = loaded
    n_layers = model.config.num_hidden_layers
    tap = Tap(model)
    assert len(tap.modules) == n_layers
    names = {id(m): name for name, m in model.named_modules()}
    attn, mlp = ("post_attention_layernorm", "post_feedforward_layernorm") if arch == "gemma3" else ("self_attn", "mlp")
    assert tap.module == attn
    assert [names[id(m)] for m in tap.modules] == [f"model.layers.{i}.{attn}" for i in range(n_layers)]
    for site, suffix in (
        ("mlp", f".{mlp}"),
        ("attn_pre_norm", ".self_attn"),
        ("mlp_pre_norm", ".mlp"),
        ("residual", ""),
    ):
        mods = layer_modules(model, site)
        assert [names[id(m)] for m in mods] == [f"model.layers.{i}{suffix}" for i in range(n_layers)]
    with pytest.raises(IA2Error, match="tap site"):
        layer_modules(model, "nowhere")


def test_tap_skips_a_vision_encoder_whose_layers_come_first():
    """Gemma 3's multimodal class names its vision tower's layers `...encoder.layers.N.self_attn` before the text
    decoder's: the tap must take the decoder's."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    cfg = Gemma3Config(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=300,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        mm_tokens_per_image=4,
    )
    model = Gemma3ForConditionalGeneration(cfg)
    names = {id(m): name for name, m in model.named_modules()}
    assert [names[id(m)] for m in layer_modules(model, "attn_pre_norm")] == [
        f"model.language_model.layers.{i}.self_attn" for i in range(2)
    ]


def test_tap_shape_and_value_is_attention_output_before_residual(loaded, arch):
    model, tok = loaded
    prompts, answers = _batch_for(tok, TEXTS, ANSWERS)
    assert [len(a) for a in answers] == [1, 2, 3]
    batch = forward_pass.make_batch(prompts, answers, tok.pad_token_id)
    tap = Tap(model, "attn_pre_norm")
    layer = 1
    attn = model.model.layers[layer].self_attn
    seen: dict[str, torch.Tensor] = {}
    handles = [
        attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o[0].detach())),
        attn.o_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("o_proj", o.detach())),
        model.model.layers[layer].register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("layer_in", (a[0] if a else kw["hidden_states"]).detach()),
            with_kwargs=True,
        ),
        model.model.layers[layer].post_attention_layernorm.register_forward_pre_hook(
            lambda m, a: seen.__setitem__("post_attn_norm_in", a[0].detach())
        ),
    ]
    try:
        with torch.no_grad():
            logits, acts = forward_pass.forward(model, batch, tap)
    finally:
        for h in handles:
            h.remove()
    B, L, H = len(prompts), model.config.num_hidden_layers, model.config.hidden_size
    assert acts.shape == (B, L, 3, H)
    assert logits.shape == (B, 3, len(tok))
    assert not tap._handles, "hooks must be removed after the forward"
    # the tap reads the self_attn module's output at the last `keep` positions ...
    assert torch.equal(acts[:, layer], seen["attn"][:, -3:])
    # ... which is o_proj's output ...
    assert torch.equal(seen["attn"], seen["o_proj"])
    # ... before the residual add: for Llama and Qwen3 the next norm sees layer input + attention output
    if arch in ("llama", "qwen3"):
        torch.testing.assert_close(seen["post_attn_norm_in"], seen["layer_in"] + seen["attn"], rtol=0, atol=1e-6)
        assert not torch.allclose(acts[:, layer], seen["post_attn_norm_in"][:, -3:])


def test_attn_and_mlp_sites_read_what_each_sublayer_adds_to_the_residual(loaded, arch):
    """`attn` is (residual after the attention add) − (layer input) and `mlp` is (layer output) − (residual after the
    attention add), on every architecture; the `_pre_norm` sites differ from them only where an output norm exists."""
    model, tok = loaded
    ids = tok(TEXTS[1])["input_ids"]
    layer = model.model.layers[1]
    pre_mlp_norm = layer.pre_feedforward_layernorm if arch == "gemma3" else layer.post_attention_layernorm
    seen: dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("in", (a[0] if a else kw["hidden_states"]).detach()), with_kwargs=True
        ),
        pre_mlp_norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("mid", a[0].detach())),
        layer.register_forward_hook(
            lambda m, a, o: seen.__setitem__("out", (o[0] if isinstance(o, tuple) else o).detach())
        ),
    ]
    taps = {site: Tap(model, site) for site in ("attn", "mlp", "attn_pre_norm", "mlp_pre_norm")}
    try:
        for tap in taps.values():
            tap.keep = len(ids)
            tap.__enter__()
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for tap in taps.values():
            tap.__exit__()
        for h in handles:
            h.remove()
    acts = {site: tap.take()[0, 1] for site, tap in taps.items()}
    torch.testing.assert_close(acts["attn"], (seen["mid"] - seen["in"])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(acts["mlp"], (seen["out"] - seen["mid"])[0], rtol=0, atol=1e-5)
    for site in ("attn", "mlp"):
        assert torch.equal(acts[site], acts[f"{site}_pre_norm"]) == (arch != "gemma3")


def test_target_key_names_the_module_only_where_a_site_reads_an_output_norm(loaded, arch):
    """Gemma 3 targets cached when `attn` read the output before its norm are not reused; other keys are as before."""
    model, _ = loaded
    base = {"model": "m", "max_new_tokens": 1, "stop": ""}
    want = {"attn": {**base, "site": "attn"}, "attn_pre_norm": {**base, "site": "attn_pre_norm"}}
    if arch == "gemma3":
        want["attn"]["module"] = "post_attention_layernorm"
    for site, fields in want.items():
        assert targets.key_fields({"model": "m"}, Tap(model, site), targets.CollectSettings(1, "")) == fields


def test_tap_raises_when_a_layer_did_not_record(loaded):
    model, _ = loaded
    tap = Tap(model)
    with tap:
        pass
    with pytest.raises(RuntimeError):
        tap.take()


def test_make_batch_left_pads_with_restarting_positions():
    pad = 0
    prompts = [[5, 6, 7], [8], [9, 10]]
    answers = [[11, 12], [13], [14, 15, 16]]
    batch = forward_pass.make_batch(prompts, answers, pad)
    # rows are prompt ⊕ answer[:-1]
    seqs = [[5, 6, 7, 11], [8], [9, 10, 14, 15]]
    width = 4
    assert batch.input_ids.shape == (3, width)
    for row, seq in enumerate(seqs):
        n_pad = width - len(seq)
        assert batch.input_ids[row].tolist() == [pad] * n_pad + seq
        assert batch.attention_mask[row].tolist() == [0] * n_pad + [1] * len(seq)
        # positions restart at 0 at the first real token
        assert batch.position_ids[row, n_pad:].tolist() == list(range(len(seq)))
    assert batch.n_answer.tolist() == [2, 1, 3]
    assert batch.keep == 3
    assert batch.answer_mask().tolist() == [[False, True, True], [False, False, True], [True, True, True]]


def test_make_batch_empty_answer_still_reads_the_last_prompt_position():
    batch = forward_pass.make_batch([[1, 2, 3]], [[]], 0)
    assert batch.input_ids.tolist() == [[1, 2, 3]]
    assert batch.keep == 1
    assert batch.answer_mask().tolist() == [[True]]


def test_padded_batch_matches_unpadded_rows(loaded):
    """Left padding with explicit position ids gives each row the logits it gets alone."""
    model, tok = loaded
    prompts, answers = _batch_for(tok, TEXTS, ANSWERS)
    batch = forward_pass.make_batch(prompts, answers, tok.pad_token_id)
    with torch.no_grad():
        logits, _ = forward_pass.forward(model, batch)
        for row, (p, a) in enumerate(zip(prompts, answers)):
            alone = model(input_ids=torch.tensor([p + a[:-1]]), use_cache=False).logits[0, -len(a) :]
            torch.testing.assert_close(logits[row, -len(a) :], alone, rtol=1e-5, atol=1e-5)


def test_right_align():
    rows = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 5, 6])]
    assert forward_pass.right_align(rows, 3).tolist() == [[0, 1, 2], [0, 0, 3], [4, 5, 6]]
    acts = [torch.ones(2, 1, 4), torch.full((2, 2, 4), 2.0)]
    out = forward_pass.right_align(acts, 2, dim=1)
    assert out.shape == (2, 2, 2, 4)
    assert torch.equal(out[0, :, 0], torch.zeros(2, 4)) and torch.equal(out[0, :, 1], torch.ones(2, 4))
    assert torch.equal(out[1], acts[1])


def test_length_sorted_chunks_cover_every_index_once():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    chunks = forward_pass.length_sorted_chunks(lengths, 3)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    assert all(len(c) <= 3 for c in chunks)
    flat = [lengths[i] for c in chunks for i in c]
    assert flat == sorted(lengths)


def test_tap_layer_subset_records_those_layers_only(loaded):
    model, tok = loaded
    ids = tok("Question: is the cat big?\nAnswer:")["input_ids"]
    batch = make_batch([ids], [[0]], tok.pad_token_id)
    _, full = forward(model, batch, Tap(model))
    _, upper = forward(model, batch, Tap(model, layers=(1,)))
    assert upper.shape[1] == 1
    torch.testing.assert_close(upper[:, 0], full[:, 1])
    assert Tap(model, layers=(1,)).all_layers is False and Tap(model).all_layers is True
    for bad in ((), (0, 0), (2,), (-1,)):
        with pytest.raises(IA2Error, match="--layers"):
            Tap(model, layers=bad)
