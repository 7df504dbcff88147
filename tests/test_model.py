"""The fused Talkie model against mlx-lm's plain one, on tiny random checkpoints.

Checkpoints (tests/checkpoints.py) are written once per session, on first use:
fp32, bf16, 4- and 8-bit affine by ``mlx_lm.convert`` from each (fp32 or bf16
scales), mxfp4 by ``mlx_lm.convert`` from fp32, and 4-bit by
``talkie_kernels.convert`` (lm_head quantized too), all from the
``talkie-2l-256`` config.

On the CPU every projection of the fused model, lm_head included, goes through
``talkie_kernels.linear`` (the native kernels); the tests below check that it
does, and that mlx-lm's quantization, LoRA/DoRA and training still work on it.
"""

from __future__ import annotations

import importlib

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from mlx_lm.generate import batch_generate, generate_step
from mlx_lm.models.cache import make_prompt_cache

import talkie_kernels as tk
from talkie_kernels.convert import convert as tk_convert
from talkie_kernels.configs import CONFIGS
from talkie_kernels.graph import decode_step_nodes
from talkie_kernels.loader import CheckpointError
from talkie_kernels.models import talkie

import oracle as O
from checkpoints import edit_checkpoint, write_checkpoint

CONFIG = CONFIGS["talkie-2l-256"]
# Not from the tokenizer's training corpus (checkpoint._CORPUS), whose lines now
# tokenize to a few long merges: 57 ids here (the corpus's fox-and-king lines: 20).
PROMPT = "The wireless set in the parlour hummed while Grandmother said the telegraph was faster than any horse."


def greedy(model, prompt, n):
    tokens = generate_step(mx.array(prompt), model, max_tokens=n, sampler=lambda x: mx.argmax(x, axis=-1))
    return [int(t) for t, _ in tokens]


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("talkie")


@pytest.fixture(scope="session")
def fp32_path(ckpt_dir):
    return write_checkpoint(ckpt_dir / "fp32", CONFIG, "float32", seed=0)


@pytest.fixture(scope="session")
def bf16_path(ckpt_dir):
    return write_checkpoint(ckpt_dir / "bf16", CONFIG, "bfloat16", seed=1)


@pytest.fixture(scope="session")
def q4_mlx_path(mlx_quantized):
    return mlx_quantized("float32", 4)


@pytest.fixture(scope="session")
def mlx_quantized(ckpt_dir, fp32_path, bf16_path):
    """``mlx_lm.convert -q`` outputs by (source dtype, bits), made on first use."""
    made = {}

    def get(dtype: str, bits: int, mode: str = "affine"):
        if (dtype, bits, mode) not in made:
            dst = ckpt_dir / f"q{bits}-{mode}-mlx-{dtype}"
            src = fp32_path if dtype == "float32" else bf16_path
            importlib.import_module("mlx_lm.convert").convert(
                str(src), str(dst), quantize=True, q_bits=bits, q_mode=mode
            )
            made[dtype, bits, mode] = dst
        return made[dtype, bits, mode]

    return get


@pytest.fixture(scope="session")
def q4_tk_path(ckpt_dir, fp32_path):
    dst = ckpt_dir / "q4-tk"
    tk_convert(str(fp32_path), str(dst), quantize=True)
    return dst


@pytest.fixture(scope="session")
def fp32(fp32_path):
    model, tokenizer = tk.load(fp32_path)
    plain, _ = mlx_lm.load(str(fp32_path))
    return model, plain, tokenizer


@pytest.fixture(scope="session")
def ids(fp32):
    return mx.array([fp32[2].encode(PROMPT)])


def test_model_structure(fp32):
    model, _, _ = fp32
    block = model.layers[0]
    assert isinstance(model.lm_head, nn.Linear)
    assert block.attn.attn_qkv.weight.shape == (3 * 2 * 128, 256)
    assert block.mlp.mlp_gate_linear.weight.shape == (2 * CONFIG["intermediate_size"], 256)
    keys = dict(tree_flatten(model.parameters()))
    assert "lm_head_gain.w_g" not in keys and "lm_head.weight" in keys


def test_logits_match_plain_fp32(fp32, ids):
    model, plain, _ = fp32
    batch = mx.concatenate([ids, ids[:, ::-1]])  # B = 2
    err = O.rel_err(model(batch), plain(batch))
    print(f"fp32 logits rel err vs mlx-lm: {err:.2e}")
    assert err <= O.MODEL_FP32


def test_prefill_then_decode_equals_full_pass(fp32, ids):
    model, _, _ = fp32
    full = model(ids)
    cache = make_prompt_cache(model)
    n = 7
    steps = [model(ids[:, :n], cache=cache)]
    for i in range(n, ids.shape[1]):
        steps.append(model(ids[:, i : i + 1], cache=cache))
        assert isinstance(cache[0].offset, int)
    assert O.rel_err(mx.concatenate(steps, axis=1), full) <= O.REORDERED_FP32


def test_greedy_tokens_equal_plain(fp32, ids):
    model, plain, _ = fp32
    assert greedy(model, ids[0], 24) == greedy(plain, ids[0], 24)


def test_stream_generate_text_equals_plain(fp32):
    from mlx_lm.generate import stream_generate

    model, plain, tokenizer = fp32
    texts = ["".join(r.text for r in stream_generate(m, tokenizer, PROMPT, max_tokens=12))
             for m in (model, plain)]
    assert texts[0] == texts[1]


def test_decode_past_trained_context(fp32):
    # Positions past 2048: a cache already holding 3000 (random) positions.
    from mlx_lm.models.cache import KVCache

    model, plain, _ = fp32
    shape = (1, CONFIG["num_attention_heads"], 3000, CONFIG["head_dim"])
    state = [(mx.random.normal(shape, key=mx.random.key(2 * i)),
              mx.random.normal(shape, key=mx.random.key(2 * i + 1))) for i in range(len(model.layers))]
    outs = []
    for m in (model, plain):
        cache = []
        for k, v in state:
            c = KVCache()
            c.state = (k, v, 3000)
            cache.append(c)
        outs.append(mx.concatenate([m(mx.array([[t]]), cache=cache) for t in (5, 77, 300)], axis=1))
    assert O.rel_err(outs[0], outs[1]) <= O.MODEL_FP32


def test_batch_generate_equals_one_at_a_time(fp32):
    model, plain, tokenizer = fp32
    prompts = [tokenizer.encode(p) for p in ("Hello", PROMPT, "Steam engines, railways")]
    assert len({len(p) for p in prompts}) == 3
    out = batch_generate(model, tokenizer, prompts, max_tokens=10, return_token_ids=True)
    eos = tokenizer.eos_token_ids
    for prompt, got in zip(prompts, out.token_ids):
        want = greedy(model, prompt, 10)
        cut = next((i for i, t in enumerate(want) if t in eos), len(want))
        assert got == want[:cut]
    plain_out = batch_generate(plain, tokenizer, prompts, max_tokens=10, return_token_ids=True)
    assert out.token_ids == plain_out.token_ids


def test_array_offsets_left_padding(fp32):
    # BatchKVCache directly: (B,) offsets, negative for the padded rows.
    from mlx_lm.models.cache import BatchKVCache

    model, plain, _ = fp32
    rows = [[5, 9, 33, 41, 7, 80], [12, 13, 14]]
    pad = [0, 3]
    batch = mx.array([[0] * p + r for p, r in zip(pad, rows)])
    outs = []
    for m in (model, plain):
        cache = [BatchKVCache(pad) for _ in m.layers]
        logits = [m(batch, cache=cache)[:, -1]]
        for t in (3, 4):
            assert isinstance(cache[0].offset, mx.array)
            logits.append(m(mx.array([[t], [t]]), cache=cache)[:, -1])
        outs.append(mx.stack(logits))
    assert O.rel_err(outs[0], outs[1]) <= O.MODEL_FP32


def test_bf16_close_to_plain(bf16_path, ids):
    model, _ = tk.load(bf16_path)
    plain, _ = mlx_lm.load(str(bf16_path))
    # fp32 reference on the same (bf16-rounded) weights.
    ref, _ = mlx_lm.load(str(bf16_path))
    ref.update(tree_map(lambda p: p.astype(mx.float32), ref.parameters()))
    want = ref(ids)
    err, plain_err = O.rel_err(model(ids), want), O.rel_err(plain(ids), want)
    print(f"bf16 rel err vs fp32: fused {err:.2e}, mlx-lm {plain_err:.2e}")
    assert err <= max(O.SLACK * plain_err, O.MODEL_BF16)
    assert O.rel_err(model(ids), plain(ids)) <= O.MODEL_BF16_VS_PLAIN


MIXES = {
    # name: (checkpoint dtype, {key predicate: dtype}) — the tensors given another dtype.
    "bf16-one-fp32-projection": ("bfloat16", {lambda k: k == "model.blocks.0.attn.attn_query.weight": "float32"}),
    "bf16-fp32-down-projection": ("bfloat16", {lambda k: k.endswith("1.mlp.mlp_resid.weight"): "float32"}),
    "fp32-embedding-bf16-blocks": ("bfloat16", {lambda k: k == "model.embed.weight": "float32"}),
    "bf16-embedding-fp32-blocks": ("bfloat16", {lambda k: k.startswith("model.blocks."): "float32"}),
    "fp32-one-bf16-projection": ("float32", {lambda k: k.endswith("mlp.mlp_gate.weight"): "bfloat16"}),
    "bf16-fp32-head-and-gains": ("bfloat16", {lambda k: k == "lm_head" or k.endswith("_g"): "float32"}),
    "fp16-embedding-bf16-blocks": ("bfloat16", {lambda k: k == "model.embed.weight": "float16"}),
}


@pytest.mark.parametrize("mix", MIXES)
def test_mixed_dtype_checkpoints_run_as_plain(ckpt_dir, fp32_path, bf16_path, ids, mix):
    # The plain model's sums promote where dtypes meet; the fused ops get
    # operands cast the same way (they take one dtype).
    dtype, changes = MIXES[mix]
    src = fp32_path if dtype == "float32" else bf16_path
    weights = mx.load(str(src / "model.safetensors"))
    replace = {k: v.astype(getattr(mx, d)) for k, v in weights.items()
               for pred, d in changes.items() if pred(k)}
    assert replace
    path = edit_checkpoint(src, ckpt_dir / f"mixed-{mix}", replace=replace)
    model, _ = tk.load(path)
    plain, _ = mlx_lm.load(str(path))
    ref, _ = mlx_lm.load(str(path))
    ref.update(tree_map(lambda p: p.astype(mx.float32), ref.parameters()))
    got, want, exact = model(ids), plain(ids), ref(ids)
    assert got.dtype == want.dtype
    err, plain_err = O.rel_err(got, exact), O.rel_err(want, exact)
    print(f"{mix}: logits rel err vs fp32: fused {err:.2e}, mlx-lm {plain_err:.2e}")
    assert err <= max(O.SLACK * plain_err, O.MODEL_BF16)
    assert O.rel_err(got, want) <= O.MODEL_BF16_VS_PLAIN
    # Through the KV cache too (the cache holds the promoted dtype).
    cache = make_prompt_cache(model)
    steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(5, 8)]
    assert O.rel_err(mx.concatenate(steps, axis=1), got[:, :8]) <= O.MODEL_BF16


def test_q4_mlx_convert_matches_plain(q4_mlx_path, ids):
    model, _ = tk.load(q4_mlx_path)
    plain, _ = mlx_lm.load(str(q4_mlx_path))
    assert isinstance(model.layers[0].attn.attn_qkv, nn.QuantizedLinear)
    assert isinstance(model.lm_head, nn.Linear)  # mlx-lm leaves the bare head alone
    assert O.rel_err(model(ids), plain(ids)) <= O.MODEL_FP32
    assert greedy(model, ids[0], 12) == greedy(plain, ids[0], 12)


def test_q4_batch_generate_equals_plain(q4_mlx_path, fp32):
    # Batched decode rows (M = 3) through the quantized kernels: fp32 scales, so
    # mlx-lm's own quantized matmul is exact and the tokens must agree.
    tokenizer = fp32[2]
    model, _ = tk.load(q4_mlx_path)
    plain, _ = mlx_lm.load(str(q4_mlx_path))
    prompts = [tokenizer.encode(p) for p in ("Hello", PROMPT, "Steam engines, railways")]
    out = batch_generate(model, tokenizer, prompts, max_tokens=10, return_token_ids=True)
    want = batch_generate(plain, tokenizer, prompts, max_tokens=10, return_token_ids=True)
    assert out.token_ids == want.token_ids


def test_q4_tk_convert_quantizes_lm_head(q4_tk_path, q4_mlx_path, fp32_path, ids):
    model, _, config = tk.load(q4_tk_path, return_config=True)
    head = model.lm_head
    assert isinstance(head, nn.QuantizedLinear) and head.bits == 4
    assert config["quantization"]["bits"] == 4
    # Expected: mlx-lm's 4-bit model up to the final norm, then the quantized,
    # gain-folded head (fp32 checkpoint: gain · lm_head quantized once).
    plain, _ = mlx_lm.load(str(q4_mlx_path))
    raw = mx.load(str(fp32_path / "model.safetensors"))
    folded = raw["lm_head"] * raw["lm_head_gain.w_g"]
    w = mx.dequantize(*mx.quantize(folded, group_size=64, bits=4), group_size=64, bits=4)
    want = plain.model(ids) @ w.T
    assert O.rel_err(model(ids), want) <= O.MODEL_FP32
    # mlx-lm's plain Talkie expects the bare HF head and the unfused keys.
    with pytest.raises(ValueError):
        mlx_lm.load(str(q4_tk_path))


def test_reload_of_saved_fused_model_does_not_refold(ckpt_dir, fp32_path, fp32, ids):
    dst = ckpt_dir / "fused-fp32"
    tk_convert(str(fp32_path), str(dst))
    model, _ = tk.load(dst)
    assert O.rel_err(model(ids), fp32[0](ids)) <= O.RESAVED_FP32


@pytest.mark.parametrize("hidden", [256, 512])
def test_fused_layers_quantize_group_64(hidden):
    # mlx-lm's quantize_model / load_model quantize with nn.quantize: every
    # fused projection and the head must take group size 64.
    from mlx_lm.utils import quantize_model

    cfg = dict(CONFIGS["talkie-8l-512"] if hidden == 512 else CONFIG, num_hidden_layers=1)
    model = talkie.Model(talkie.ModelArgs.from_dict(cfg))
    model, qcfg = quantize_model(model, cfg, group_size=64, bits=4)
    block = model.layers[0]
    for m in (block.attn.attn_qkv, block.attn.attn_resid, block.mlp.mlp_gate_linear,
              block.mlp.mlp_resid, model.lm_head):
        assert isinstance(m, talkie.QuantizedLinear), m
    assert qcfg["quantization"]["group_size"] == 64


# Every projection through talkie_kernels.linear (the native kernels on the CPU).


def projections(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]


@pytest.fixture
def linear_calls(monkeypatch):
    """The weights ``tk.linear`` is called with, in call order."""
    calls = []
    real = tk.linear

    def spy(x, weight, *args, **kwargs):
        calls.append(weight)
        return real(x, weight, *args, **kwargs)

    monkeypatch.setattr(tk, "linear", spy)
    return calls


CHECKPOINTS = {
    "fp32": lambda r: r.getfixturevalue("fp32_path"),
    "bf16": lambda r: r.getfixturevalue("bf16_path"),
    "q4-mlx-fp32": lambda r: r.getfixturevalue("mlx_quantized")("float32", 4),
    "q8-mlx-bf16": lambda r: r.getfixturevalue("mlx_quantized")("bfloat16", 8),
    "q4-tk": lambda r: r.getfixturevalue("q4_tk_path"),
    "mxfp4-mlx-fp32": lambda r: r.getfixturevalue("mlx_quantized")("float32", 4, "mxfp4"),
}


@pytest.mark.parametrize("ckpt", CHECKPOINTS)
def test_every_projection_goes_through_tk_linear(request, ckpt, ids, linear_calls):
    model, _ = tk.load(CHECKPOINTS[ckpt](request))
    layers = projections(model)
    assert len(layers) == 4 * CONFIG["num_hidden_layers"] + 1  # qkv, resid, gate+linear, down; lm_head
    for name, m in layers:
        assert type(m) in (talkie.Linear, talkie.QuantizedLinear), (name, type(m))
    linear_calls.clear()
    mx.eval(model(ids))
    assert sorted(map(id, linear_calls)) == sorted(id(m.weight) for _, m in layers)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_decode_runs_natively(mlx_quantized, bits):
    # On the native backend no projection is left to MLX's quantized_matmul.
    if tk.backend() != "native":
        pytest.skip("the native CPU backend only")
    model, _ = tk.load(mlx_quantized("bfloat16", bits))
    nodes = decode_step_nodes(model, prompt_len=5)
    assert "QuantizedMatmul" not in nodes, nodes


def test_mxfp4_checkpoint_no_further_from_exact_than_mlx_lm(mlx_quantized, ids):
    # Modes the native kernels do not run reach MLX's op through tk.linear.
    # The mxfp4 embedding dequantizes to bf16, so activations are bf16 in both.
    path = mlx_quantized("float32", 4, "mxfp4")
    model, _ = tk.load(path)
    plain, _ = mlx_lm.load(str(path))
    assert model.layers[0].attn.attn_qkv.mode == "mxfp4"
    exact = dequantized_fp32(mlx_lm.load(str(path))[0])(ids)
    err, plain_err = O.rel_err(model(ids), exact), O.rel_err(plain(ids), exact)
    print(f"mxfp4: logits rel err vs exact: fused {err:.2e}, mlx-lm {plain_err:.2e}")
    # Both errors are mostly the bf16 activations' (as in test_bf16_close_to_plain).
    assert err <= max(O.SLACK * plain_err, O.MODEL_BF16)


def dequantized_fp32(model):
    """``model`` with every quantized layer dequantized and every parameter fp32, in place."""

    def dense(m):
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            affine = m.mode == "affine"  # float scales and biases; the fp modes have neither
            scales = m.scales.astype(mx.float32) if affine else m.scales
            biases = m.biases.astype(mx.float32) if affine else None
            w = mx.dequantize(m.weight, scales, biases, group_size=m.group_size, bits=m.bits,
                              mode=m.mode).astype(mx.float32)
            layer = nn.Linear(w.shape[1], w.shape[0], bias=False) if isinstance(m, nn.QuantizedLinear) \
                else nn.Embedding(*w.shape)
            layer.weight = w
            return layer
        return m

    model.update_modules(tree_map(dense, model.leaf_modules(), is_leaf=nn.Module.is_module))
    model.update(tree_map(lambda p: p.astype(mx.float32), model.parameters()))
    return model


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_quantized_logits_no_further_from_exact_than_mlx_lm(mlx_quantized, ids, dtype, bits):
    # The exact result: the same quantized weights, dequantized, run in fp32.
    # MLX's CPU quantized_matmul accumulates bf16 in bf16, so mlx-lm's own
    # bf16-scaled model is itself far from it; the fused one may not be further.
    path = mlx_quantized(dtype, bits)
    model, _ = tk.load(path)
    plain, _ = mlx_lm.load(str(path))
    assert isinstance(model.layers[0].attn.attn_qkv, talkie.QuantizedLinear)
    assert model.layers[0].attn.attn_qkv.scales.dtype == getattr(mx, dtype)
    exact = dequantized_fp32(mlx_lm.load(str(path))[0])(ids)
    err, plain_err = O.rel_err(model(ids), exact), O.rel_err(plain(ids), exact)
    print(f"q{bits} {dtype} scales: logits rel err vs exact: fused {err:.2e}, mlx-lm {plain_err:.2e}")
    floor = O.MODEL_FP32 if dtype == "float32" else O.TOL[mx.bfloat16]
    assert err <= max(plain_err, floor)


def test_nn_quantize_fused_model(fp32_path, ids):
    # nn.quantize with mlx's defaults: every projection becomes this model's
    # QuantizedLinear, and the result is the quantized weights' exact one.
    model, _ = tk.load(fp32_path)
    nn.quantize(model, group_size=32, bits=6)
    for name, m in projections(model):
        assert type(m) is talkie.QuantizedLinear and (m.group_size, m.bits) == (32, 6), name
    got = model(ids)
    assert O.rel_err(got, dequantized_fp32(model)(ids)) <= O.MODEL_FP32


@pytest.mark.parametrize("mode", ["affine", "mxfp4", "mxfp8"])
def test_to_quantized_modes(mode):
    # Other modes reach mx.quantized_matmul through tk.linear: MLX's own layer's result.
    lin = talkie.Linear(128, 24, bias=False)
    q = lin.to_quantized(mode=mode)
    want = nn.QuantizedLinear.from_linear(lin, mode=mode)
    assert type(q) is talkie.QuantizedLinear and q.mode == mode
    assert all(mx.array_equal(q[k], want[k]).item() for k in want if k in q)
    x = mx.random.normal((3, 128), key=mx.random.key(0))
    if mode == "affine":
        assert O.rel_err(q(x), want(x)) <= O.REORDERED_FP32
    else:
        assert mx.array_equal(q(x), want(x)).item()
    # Quantized activations have no tk.linear path: mlx's own layer.
    assert type(lin.to_quantized(mode="nvfp4", quantize_input=True)) is nn.QQLinear


def lora_grads(model, ids):
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    mx.random.seed(0)  # the same lora_a on every call
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 10.0, "dropout": 0.0})
    # A nonzero lora_b so that both LoRA factors get a gradient.
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = 0.01 * mx.random.normal(m.lora_b.shape, key=mx.random.key(m.lora_b.shape[1]))

    def loss(model):
        logits = model(ids[:, :-1]).astype(mx.float32)
        return nn.losses.cross_entropy(logits, ids[:, 1:]).mean()

    value, grads = nn.value_and_grad(model, loss)(model)
    return value, dict(tree_flatten(grads))


@pytest.mark.parametrize("ckpt", ["fp32", "q4-mlx-fp32"])
def test_lora_forward_and_gradients(request, ckpt, ids, monkeypatch):
    # LoRA layers wrap this model's layers (the base through tk.linear); their
    # gradients equal those of the same model with MLX's own matmuls.
    path = CHECKPOINTS[ckpt](request)
    model, _ = tk.load(path)
    value, grads = lora_grads(model, ids)
    from mlx_lm.tuner.lora import LoRALinear

    for block in model.layers:
        assert isinstance(block.attn.attn_qkv, LoRALinear)
        assert type(block.attn.attn_qkv.linear) in (talkie.Linear, talkie.QuantizedLinear)
    assert grads and all(k.endswith(("lora_a", "lora_b")) for k in grads)
    assert all(float(mx.abs(g).max()) > 0 for g in grads.values())

    monkeypatch.setattr(tk, "linear", tk.reference.linear)
    ref_model, _ = tk.load(path)
    ref_value, ref_grads = lora_grads(ref_model, ids)
    assert abs(value.item() - ref_value.item()) <= O.MODEL_FP32 * abs(ref_value.item())
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert O.rel_err(grads[k], ref_grads[k]) <= O.GRADS_FP32, k


def test_quantized_scales_and_biases_gradients(q4_mlx_path, ids, monkeypatch):
    # DWQ trains the scales and biases of the quantized layers: their gradients
    # through tk.linear equal those through MLX's own quantized_matmul.
    def grads():
        model, _ = tk.load(q4_mlx_path)
        model.freeze()
        model.unfreeze(keys=["scales", "biases"], strict=False)
        loss = lambda m: nn.losses.cross_entropy(m(ids[:, :-1]), ids[:, 1:]).mean()  # noqa: E731
        return dict(tree_flatten(nn.value_and_grad(model, loss)(model)[1]))

    got = grads()
    monkeypatch.setattr(tk, "linear", tk.reference.linear)
    want = grads()
    qkv = "model.blocks.0.attn.attn_qkv."
    assert {qkv + "scales", qkv + "biases"} <= got.keys() and got.keys() == want.keys()
    for k in got:
        assert O.rel_err(got[k], want[k]) <= O.GRADS_FP32, k


def test_dora_and_fuse(fp32_path, ids):
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = tk.load(fp32_path)
    model.freeze()
    linear_to_lora_layers(model, 1, {"rank": 4, "scale": 10.0, "dropout": 0.0}, use_dora=True)
    before = model(ids)
    loss = lambda m: m(ids).astype(mx.float32).square().mean()  # noqa: E731
    _, grads = nn.value_and_grad(model, loss)(model)
    assert any(k.endswith(".m") for k, _ in tree_flatten(grads))
    # Fusing the adapters back into plain layers leaves the outputs as they were.
    model.update_modules(
        tree_unflatten([(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")])
    )
    assert O.rel_err(model(ids), before) <= O.MODEL_FP32


def test_decode_graph_nodes(fp32):
    if tk.backend() != "native":
        pytest.skip("the graph-node budget is for the native CPU ops")
    model, plain, _ = fp32
    fused, ref = decode_step_nodes(model, prompt_len=12), decode_step_nodes(plain, prompt_len=12)
    ratio = sum(fused.values()) / sum(ref.values())
    print(f"decode nodes: fused {sum(fused.values())}, mlx-lm {sum(ref.values())}, ratio {ratio:.3f}")
    assert ratio <= O.DECODE_NODES_RATIO, (fused, ref)


# Bad checkpoints: each error names what is wrong.

W = "model.blocks.0."


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(drop=[f"{W}mlp.mlp_resid.weight"]), r"mlp_resid\.weight"),
        (dict(drop=[f"{W}attn.attn_key.weight"]), r"attn_key\.weight"),
        (dict(drop=["lm_head_gain.w_g"]), r"lm_head_gain\.w_g"),
        (dict(add={f"{W}attn.extra.weight": mx.zeros((4, 4))}), r"attn\.extra\.weight"),
        (dict(replace={f"{W}attn.attn_resid.weight": mx.zeros((256, 255))}), r"attn_resid\.weight"),
        (dict(replace={f"{W}attn.attn_value.weight": mx.zeros((200, 256))}), r"attn_value\.weight"),
        (dict(replace={f"{W}mlp.mlp_gate.weight": mx.zeros((640, 100))}), r"mlp_gate\.weight"),
        (dict(config={"model_type": "llama"}), r"model_type 'llama'"),
    ],
    ids=["missing", "missing-fused-part", "missing-gain", "extra", "misshaped",
         "misshaped-fused-part", "misshaped-fused-cols", "model-type"],
)
def test_bad_checkpoint_errors(ckpt_dir, fp32_path, edit, match, request):
    bad = edit_checkpoint(fp32_path, ckpt_dir / f"bad-{request.node.callspec.id}", **edit)
    with pytest.raises(CheckpointError, match=match) as info:
        tk.load(bad)
    assert str(bad) in str(info.value)


def test_fused_parts_quantized_differently_are_refused(ckpt_dir, fp32_path):
    # mlx_lm.convert with a per-layer recipe: attn_value at 8 bits, the rest at 4.
    def predicate(path, module):
        return {"bits": 8, "group_size": 64} if "attn_value" in path else hasattr(module, "to_quantized")

    dst = ckpt_dir / "q-mixed-qkv"
    importlib.import_module("mlx_lm.convert").convert(str(fp32_path), str(dst), quantize=True, quant_predicate=predicate)
    with pytest.raises(CheckpointError, match=r"attn_value\.weight.*quantized alike"):
        tk.load(dst)


def test_missing_directory():
    with pytest.raises(FileNotFoundError):
        tk.load("/nonexistent/talkie")


def test_gain_folds_into_quantized_head(ckpt_dir, q4_tk_path, ids):
    # A quantized head next to an unfolded lm_head_gain: scales and biases take it.
    model, _ = tk.load(q4_tk_path)
    bad = edit_checkpoint(q4_tk_path, ckpt_dir / "q4-tk-gain", add={"lm_head_gain.w_g": mx.array([2.5])})
    scaled, _ = tk.load(bad)
    assert isinstance(scaled.lm_head, nn.QuantizedLinear)
    assert O.rel_err(scaled(ids), 2.5 * model(ids)) <= O.REORDERED_FP32


def test_repo_id_resolves_through_mlx_lm(monkeypatch, fp32_path, ids, fp32):
    # A Hugging Face repo id goes through mlx-lm's own snapshot helper (offline here).
    import mlx_lm.utils

    seen = []

    def snapshot_download(repo_id, **kwargs):
        seen.append(repo_id)
        return str(fp32_path)

    monkeypatch.setattr(mlx_lm.utils, "snapshot_download", snapshot_download)
    model, _ = tk.load("someone/talkie-tiny")
    assert seen and set(seen) == {"someone/talkie-tiny"}
    assert O.rel_err(model(ids), fp32[0](ids)) == 0.0
