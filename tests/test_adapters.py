"""Every adapter kind (LoRA, IA3, prompt tuning, prefix tuning) on every tiny architecture: left padding leaves a row's
outputs unchanged, the disabled adapter is the base model, CE and IA2 losses train, adapters save, reload, re-wrap and
restore."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    set_peft_model_state_dict,
)
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

from ia2 import config
from ia2.config import TrainConfig, adapter_kinds
from ia2.errors import IA2Error
from ia2.evaluation.scoring import MIN_SHARED_PREFIX, common_prefix, score
from ia2.model import adapters, forward_pass, generation, loading, padding
from ia2.model.taps import Tap
from ia2.registry import ADAPTER_KINDS
from ia2.training import loop
from ia2.training.loop import Item
from ia2.training.methods import IA2, SFT

TEXTS = [
    "Question: is the cat big?\nAnswer:",
    "Question: is the sad happy horse quiet?\nAnswer:",
    "Answer:",
    "Question: is the small red fast loud green slow happy mouse sad?\nAnswer:",
]
ANSWERS = [" yes", " yes please", " no maybe long", " no"]
DEMO = "Question: is the dog big?\nAnswer: yes\n\nQuestion: is the fish slow?\nAnswer: no\n\n"
LR = {"lora": 1e-2, "ia3": 1e-1, "prompt": 1e-1, "prefix": 1e-2}


@pytest.fixture(params=tuple(adapter_kinds.PRESETS))
def kind(request) -> str:
    return request.param


def _prompts_answers(tok, texts=TEXTS, answers=ANSWERS) -> tuple[list[list[int]], list[list[int]]]:
    prompts = [tok(t)["input_ids"] for t in texts]
    return prompts, [tok(t + a)["input_ids"][len(p) :] for t, a, p in zip(texts, answers, prompts)]


def _perturbed(model, cfg: str | dict, seed: int = 0) -> PeftModel:
    """A fresh adapter moved away from its initialisation (LoRA and IA3 start as the identity)."""
    peft = adapters.fresh(model, cfg, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in peft.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return peft


def _run(model, batch, tap=True):
    with torch.no_grad():
        return forward_pass.forward(model, batch, Tap(model) if tap else None)


def test_defaults_are_the_papers_lora():
    peft = adapter_kinds.peft_config(adapter_kinds.normalise("lora"))
    assert isinstance(peft, LoraConfig)
    assert (peft.r, peft.lora_alpha, set(peft.target_modules)) == (8, 8, {"q_proj", "k_proj", "o_proj"})


def test_each_kind_builds_its_peft_config():
    ia3 = adapter_kinds.peft_config(adapter_kinds.normalise("ia3"))
    assert isinstance(ia3, IA3Config)
    assert set(ia3.target_modules) == {"q_proj", "k_proj", "o_proj"} and not ia3.feedforward_modules
    with_ff = adapter_kinds.peft_config(
        adapter_kinds.normalise(
            {"peft_type": "IA3", "target_modules": ["q_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
        )
    )
    assert with_ff.feedforward_modules == {"down_proj"}
    prompt = adapter_kinds.peft_config(adapter_kinds.normalise("prompt"))
    assert isinstance(prompt, PromptTuningConfig) and prompt.num_virtual_tokens == 20
    assert str(prompt.prompt_tuning_init).endswith("RANDOM")
    prefix = adapter_kinds.peft_config(adapter_kinds.normalise({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 5}))
    assert isinstance(prefix, PrefixTuningConfig) and prefix.num_virtual_tokens == 5


def test_a_mapping_starts_from_its_preset_and_text_is_parsed():
    assert adapter_kinds.normalise({"peft_type": "lora", "r": 16}) == {**adapter_kinds.PRESETS["lora"], "r": 16}
    assert adapter_kinds.normalise('{"peft_type": "LORA", "lora_alpha": 32}')["lora_alpha"] == 32


def test_any_peft_type_trains_with_capabilities_from_the_table(llama_dir):
    """A PEFT kind without a preset (LoHa) is taken as PEFT declares it; what it allows comes from its type (an
    untested kind is neither merged nor sharded)."""
    spec = adapter_kinds.normalise({"peft_type": "LOHA", "target_modules": ["q_proj", "v_proj"], "r": 4})
    assert adapter_kinds.kind_of(spec) == adapter_kinds.AdapterKind(
        merge=False, fsdp=False, pack=False, virtual_tokens=False
    )
    assert adapter_kinds.kind_of(adapter_kinds.normalise("prefix")).virtual_tokens
    with pytest.raises(IA2Error, match="^merge_bf16 needs an adapter that merges"):
        config.make("m", "t", adapter=spec, merge_bf16=True)
    model, _ = loading.load(str(llama_dir))
    peft = adapters.fresh(model, spec, 0)
    assert any("hada" in name for name, p in peft.named_parameters() if p.requires_grad)


def test_a_kind_declared_in_user_code_is_named_where_the_kinds_are_listed():
    """The messages that list what merges, shards or packs read the registry when they are raised."""
    assert adapter_kinds.kinds_with("merge") == "LORA and IA3"
    ADAPTER_KINDS.register("LOHA", adapter_kinds.AdapterKind(merge=True, fsdp=False, pack=False, virtual_tokens=False))
    try:
        assert adapter_kinds.kinds_with("merge") == "LORA, IA3 and LOHA"
        assert (
            adapter_kinds.pack_refusal({"peft_type": "LOHA"})
            == "must be 1 for LOHA adapters (packing takes LORA and IA3)"
        )
        with pytest.raises(
            IA2Error, match=r"^merge_bf16 needs an adapter that merges \(LORA, IA3 and LOHA\), not PREFIX"
        ):
            config.make("m", "t", adapter="prefix", merge_bf16=True)
    finally:
        ADAPTER_KINDS.unregister("LOHA")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bitfit", "unknown adapter 'bitfit'"),
        ({"peft_type": "BITFIT"}, "unknown peft_type 'BITFIT'"),
        ({"peft_type": "LORA", "rr": 2}, "LORA adapter: .*unexpected keyword argument 'rr'"),
        ({"peft_type": "LORA", "r": 0}, "LORA adapter: r must be an integer of at least 1"),
        ({"peft_type": "LORA", "lora_dropout": 1.0}, "lora_dropout must be in"),
        ({"peft_type": "IA3", "target_modules": []}, "target_modules names no module"),
        ({"peft_type": "LORA", "target_modules": 5}, "target_modules must be a module name or a list of them"),
        ({"peft_type": "LORA", "lora_alpha": "x"}, "lora_alpha must be a number"),
        ({"peft_type": "IA3", "feedforward_modules": ["down_proj"]}, "subset of `target_modules`"),
        (
            {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 0},
            "num_virtual_tokens must be an integer of at least 1",
        ),
        ({"peft_type": "LORA"}, None),
    ],
)
def test_bad_settings_are_one_line_errors(spec, message, llama_dir):
    if message is None:
        assert adapter_kinds.normalise(spec) == adapter_kinds.PRESETS["lora"]
        return
    with pytest.raises(IA2Error, match=message) as err:
        adapter_kinds.normalise(spec)
    assert "\n" not in str(err.value)
    model, _ = loading.load(str(llama_dir))
    with pytest.raises(IA2Error, match=message):
        adapters.fresh(model, spec, 0)


@pytest.mark.parametrize("kind_", ["lora", "ia3"])
def test_missing_target_modules_fail_at_fresh(kind_, llama_dir):
    model, _ = loading.load(str(llama_dir))
    with pytest.raises(IA2Error, match=f"cannot add a {kind_.upper()} adapter to LlamaForCausalLM") as err:
        adapters.fresh(model, {"peft_type": kind_.upper(), "target_modules": ["nowhere"]}, 0)
    assert "\n" not in str(err.value)


def test_prefix_tuning_refuses_layers_without_a_kv_cache():
    """Qwen3-Next mixes linear-attention layers (a recurrent state, no key/value cache) with attention layers."""
    config = Qwen3NextConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        layer_types=["linear_attention", "full_attention"],
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        linear_num_value_heads=2,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
    )
    model = Qwen3NextForCausalLM(config).eval()
    with pytest.raises(
        IA2Error,
        match="prefix tuning needs a key/value cache in every layer; Qwen3NextForCausalLM "
        "also has linear_attention layers",
    ):
        adapters.fresh(model, "prefix", 0)
    assert isinstance(adapters.fresh(model, "prompt", 0), PeftModel)


def test_left_padding_does_not_change_a_row(model_dir, arch, kind):
    """A row in a left-padded batch has the logits and activations it has alone and unpadded, which are PEFT's own."""
    model, tok = loading.load(str(model_dir))
    peft = _perturbed(model, kind)
    prompts, answers = _prompts_answers(tok)
    batch = forward_pass.make_batch(prompts, answers, tok.pad_token_id)
    assert not batch.attention_mask.all(), "setup: the batch must be padded"
    logits, acts = _run(peft, batch)
    n_layers = model.config.num_hidden_layers
    assert logits.shape[:2] == (len(prompts), batch.keep) and acts.shape[:3] == (len(prompts), n_layers, batch.keep)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        n = len(answer)
        alone_logits, alone_acts = _run(peft, forward_pass.make_batch([prompt], [answer], tok.pad_token_id))
        torch.testing.assert_close(logits[row, -n:], alone_logits[0, -n:], rtol=0, atol=1e-5)
        torch.testing.assert_close(acts[row, :, -n:], alone_acts[0, :, -n:], rtol=0, atol=1e-5)
        with torch.no_grad():  # PEFT's own forward on the unpadded row, with no position ids to lose
            native = peft(input_ids=torch.tensor([prompt + answer[:-1]]), use_cache=False).logits[0, -n:]
        torch.testing.assert_close(alone_logits[0, -n:], native, rtol=0, atol=1e-5)


def test_scores_with_a_shared_prefix_are_each_rows_own(model_dir, kind):
    """Prompts sharing a long prefix (an instruction, demonstrations) score as each prompt does alone, under every
    adapter kind: the prefix KV cache must not be reused where the adapter rewrites the input (prompt tuning)."""
    model, tok = loading.load(str(model_dir))
    peft = _perturbed(model, kind)
    prompts = [tok(DEMO * 3 + t)["input_ids"] for t in TEXTS]
    assert common_prefix(prompts) >= MIN_SHARED_PREFIX, "setup: the prompts must share a cacheable prefix"
    labels = [tok(" yes", add_special_tokens=False)["input_ids"], tok(" no", add_special_tokens=False)["input_ids"]]
    assert all(len(ids) == 1 for ids in labels), "setup: single-token labels (the cached path)"
    together = score(peft, prompts, labels, tok.pad_token_id, batch_size=4).label_logp
    for i, prompt in enumerate(prompts):
        torch.testing.assert_close(
            together[i], score(peft, [prompt], labels, tok.pad_token_id).label_logp[0], rtol=0, atol=1e-5
        )


def test_prompt_tuning_puts_the_virtual_tokens_right_before_the_row(llama_dir):
    """The ground truth without PEFT's forward: the prompt embeddings concatenated before the row's embeddings."""
    model, tok = loading.load(str(llama_dir))
    peft = _perturbed(model, {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3})
    prompts, answers = _prompts_answers(tok)
    logits, _ = _run(peft, forward_pass.make_batch(prompts, answers, tok.pad_token_id), tap=False)
    base = peft.get_base_model()
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        ids = torch.tensor([prompt + answer[:-1]])
        with torch.no_grad():
            embeds = torch.cat([peft.get_prompt(1), base.get_input_embeddings()(ids)], dim=1)
            want = base(inputs_embeds=embeds).logits[0, -len(answer) :]
        torch.testing.assert_close(logits[row, -len(answer) :], want, rtol=0, atol=1e-5)


def test_prefix_on_sliding_window_batches_while_the_window_holds(model_dirs):
    """Gemma 3's sliding window (16 here) counts pads: short padded rows run batched, longer ones one at a time."""
    model, tok = loading.load(str(model_dirs["gemma3"]))
    peft = _perturbed(model, {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2})
    prompts, answers = _prompts_answers(tok, TEXTS[::2], ANSWERS[::2])
    batch = forward_pass.make_batch(prompts, answers, tok.pad_token_id)
    assert 2 + batch.input_ids.shape[1] <= 16 and not padding.rows_alone(peft, batch.input_ids.shape[1])
    assert padding.rows_alone(peft, 15)
    with peft.disable_adapter():
        assert not padding.rows_alone(peft, 15)
    logits, acts = _run(peft, batch)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        n = len(answer)
        alone_logits, alone_acts = _run(peft, forward_pass.make_batch([prompt], [answer], tok.pad_token_id))
        torch.testing.assert_close(logits[row, -n:], alone_logits[0, -n:], rtol=0, atol=1e-5)
        torch.testing.assert_close(acts[row, :, -n:], alone_acts[0, :, -n:], rtol=0, atol=1e-5)


def test_disabled_adapter_is_exactly_the_base_model(model_dir, kind):
    """The frozen ICL teacher runs as `disable_adapter()`: forward passes and greedy generation must be the base's."""
    base, tok = loading.load(str(model_dir))
    model, _ = loading.load(str(model_dir))
    peft = _perturbed(model, kind)
    prompts, answers = _prompts_answers(tok)
    batch = forward_pass.make_batch([tok(DEMO)["input_ids"] + p for p in prompts], answers, tok.pad_token_id)
    want_logits, want_acts = _run(base, batch)
    with peft.disable_adapter():
        logits, acts = _run(peft, batch)
        generated = generation.generate(peft, tok, prompts, max_new_tokens=3, stop="\n\n")
    assert torch.equal(logits, want_logits) and torch.equal(acts, want_acts)
    assert generated == generation.generate(base, tok, prompts, max_new_tokens=3, stop="\n\n")
    enabled, _ = _run(peft, batch, tap=False)
    assert not torch.allclose(enabled, want_logits, atol=1e-4), "the perturbed adapter should change the logits"


def _items(peft, tok, with_acts: bool) -> list[Item]:
    """Toy items; IA2 targets are the frozen model's activations with two demonstrations before the prompt."""
    prompts, answers = _prompts_answers(tok)
    if not with_acts:
        return [Item(p, a) for p, a in zip(prompts, answers)]
    demo = tok(DEMO)["input_ids"]
    with peft.disable_adapter():
        _, acts = _run(peft, forward_pass.make_batch([demo + p for p in prompts], answers, tok.pad_token_id))
    return [Item(p, a, acts[row, :, -len(a) :]) for row, (p, a) in enumerate(zip(prompts, answers))]


@pytest.mark.parametrize("stage", [SFT, IA2], ids=["ce", "ia2"])
def test_losses_fall_under_adam(model_dir, kind, stage):
    model, tok = loading.load(str(model_dir))
    peft = adapters.fresh(model, kind, 0)
    tap, cfg, pad = Tap(peft), TrainConfig(), tok.pad_token_id
    items = _items(peft, tok, with_acts=stage is IA2)
    trainable = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    assert trainable and all(any(s in n for s in ("lora_", "ia3_", "prompt_encoder")) for n in trainable)
    params = list(trainable.values())
    optimizer = torch.optim.Adam(params, lr=LR[kind])
    before = loop.dev_loss(loop.Objective(peft, tap, stage, cfg, pad), items)
    peft.train()
    for _ in range(8):
        loss = loop.batch_loss(loop.Objective(peft, tap, stage, cfg, pad), items)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loop.dev_loss(loop.Objective(peft, tap, stage, cfg, pad), items) < 0.9 * before


def test_saved_adapter_reloads_to_identical_logits(model_dir, kind, tmp_path):
    model, tok = loading.load(str(model_dir))
    peft = _perturbed(model, kind)
    adapters.save(peft, tmp_path / "adapter", "my-base", {"README.md": "# card\n"})
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "my-base", "the base model as the user named it, not a cache path"
    assert (tmp_path / "adapter" / "README.md").read_text() == "# card\n"
    assert peft.peft_config["default"].base_model_name_or_path == str(model_dir), "the live model is left as it was"
    fresh_base, _ = loading.load(str(model_dir))
    reloaded = PeftModel.from_pretrained(fresh_base, str(tmp_path / "adapter")).eval()
    prompts, answers = _prompts_answers(tok)
    batch = forward_pass.make_batch(prompts, answers, tok.pad_token_id)
    want_logits, want_acts = _run(peft, batch)
    logits, acts = _run(reloaded, batch)
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(acts, want_acts, rtol=0, atol=1e-6)


def test_adapter_state_round_trips(model_dir, kind):
    """The trainer's best-state restore: `adapter_state` copies, `set_peft_model_state_dict` puts it back."""
    model, tok = loading.load(str(model_dir))
    peft = adapters.fresh(model, kind, 0)
    prompts, answers = _prompts_answers(tok)
    batch = forward_pass.make_batch(prompts, answers, tok.pad_token_id)
    state, (want, _) = loop.adapter_state(peft), _run(peft, batch, tap=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random, not uniform: Gemma 3 normalises right after q, k and o, undoing a uniform scale
        for p in peft.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
    moved, _ = _run(peft, batch, tap=False)
    assert not torch.allclose(moved, want, atol=1e-4), "the state copy must not alias the live weights"
    set_peft_model_state_dict(peft, state)
    got, _ = _run(peft, batch, tap=False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_fresh_is_seeded(model_dir, kind):
    model, _ = loading.load(str(model_dir))
    first = adapters.fresh(model, kind, 7)
    a = loop.adapter_state(first)
    second = adapters.fresh(first, kind, 7)
    b = loop.adapter_state(second)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if kind != "ia3":  # IA3 vectors start at one; LoRA A, prompt and prefix embeddings are drawn from the seed
        c = loop.adapter_state(adapters.fresh(second, kind, 8))
        assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("first, second", list(itertools.product(adapter_kinds.PRESETS, adapter_kinds.PRESETS)))
def test_rewrapping_replaces_an_adapter_of_any_kind(llama_dir, first, second):
    clean, tok = loading.load(str(llama_dir))
    want = loop.adapter_state(adapters.fresh(clean, second, 3))
    model, _ = loading.load(str(llama_dir))
    n_modules = len(list(model.modules()))
    again = adapters.fresh(_perturbed(model, first), second, 3)
    got = loop.adapter_state(again)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    base, _ = loading.load(str(llama_dir))
    prompts, answers = _prompts_answers(tok)
    batch = forward_pass.make_batch(prompts, answers, tok.pad_token_id)
    with again.disable_adapter():
        logits, _ = _run(again, batch, tap=False)
    assert torch.equal(logits, _run(base, batch, tap=False)[0])
    assert len(list(adapters.unwrap(again).modules())) == n_modules, "adapters must not nest or linger"
