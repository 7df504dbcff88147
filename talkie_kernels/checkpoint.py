"""Random-weight Talkie checkpoints in the Hugging Face layout (as mlx-lm loads them),
and ``talkie-kernels init-checkpoint``.

A checkpoint to try ``generate``, ``server``, ``convert``, ``bench --model`` and
``talkie_kernels.load`` on without downloading the released model; the tests
write theirs with the same code (``tests/checkpoints.py``). A checkpoint is a
directory with

* ``config.json`` (``model_type: "talkie"``, the keys of
  ``talkie_kernels.configs``, ``eos_token_id``, and ``talkie_kernels_random_init``
  recording the config name and seed);
* ``model.safetensors`` with the HF keys (``lm_head`` bare, ``lm_head_gain.w_g``);
* ``tokenizer.json`` + ``tokenizer_config.json``: a byte-level BPE over the
  ASCII bytes with one id per row of the embedding (``make_tokenizer``: every
  id decodes to its own non-empty string), with a chat template, so
  ``transformers.AutoTokenizer`` (and so ``mlx_lm.load``) loads it offline.

``model.safetensors`` is written one tensor at a time (``save_one_by_one``):
a 13B-sized checkpoint needs the memory of its largest tensor, not all of them.

Weights are normal with std ``fan_in**-0.5`` (the embedding std 1). Gains are
drawn away from their init values so each one matters: ``attn_gain`` and
``mlp_gain`` from U(0.3, 1.5), ``embed_skip`` from ±U(0.2, 0.8), ``head_g``
from U(0.5, 2.0), ``lm_head_gain`` from U(1.5, 3.0). The text such a model
generates is gibberish; its speed and shapes are the real thing's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import deque
from pathlib import Path

import mlx.core as mx
import numpy as np

from .arg_checks import int_in, uncreatable_dir
from .configs import CONFIGS

EOS = "<|endoftext|>"
UNK = "<|unk|>"  # any character outside ASCII
SPECIAL_TOKENS = [EOS, "<|user|>", "<|assistant|>", "<|system|>", UNK]

#: A plain-text chat template (jinja) in the shape transformers expects.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

#: The config.json key that marks a checkpoint written here.
MARKER = "talkie_kernels_random_init"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
DTYPES = ("float32", "bfloat16", "float16")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "In the year of our Lord eighteen hundred and ninety, the telegraph reached the valley.",
    "Hello, world! How are you today? I am well, thank you kindly.",
    "Talkie is a language model trained on text written before 1931.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 1931.",
    "Once upon a time there lived a king who had three daughters.",
    "Steam engines, railways, and the wireless changed the world.",
]


def make_tokenizer(path, vocab_size: int):
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``path``.

    Returns the ``tokenizers.Tokenizer``, with exactly ``vocab_size`` ids (the
    model's), each decoding to a distinct non-empty string:

    1. the special tokens, then the 128 ASCII bytes (byte-level: a generated
       id is a character, not a piece of one; other characters encode as
       ``<|unk|>``);
    2. merges learned from a small fixed corpus (real-looking words);
    3. then merges of printable characters onto tokens, shortest first
       ("ab", ..., "abc", ...), until the vocabulary is full.

    (Before, a BPE trained on the corpus alone covered 384 of 512 ids: most
    generated ids decoded to nothing.)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ascii_chars, printable = ascii_alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(ascii_chars):
        raise ValueError(f"vocab_size {vocab_size}: the tokenizer needs at least "
                         f"{len(SPECIAL_TOKENS) + len(ascii_chars)} ids")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=ascii_chars,
        limit_alphabet=len(ascii_chars),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    queue = deque(printable)
    while len(vocab) < vocab_size:
        left = queue.popleft()
        for right in printable:
            if len(vocab) == vocab_size:
                break
            if left + right not in vocab:
                vocab[left + right] = len(vocab)
                merges.append([left, right])
                queue.append(left + right)
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.save(str(path / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "bos_token": None,
        "unk_token": UNK,
        "pad_token": EOS,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return tok


def ascii_alphabet() -> tuple[list[str], list[str]]:
    """Byte-level BPE's characters for the 128 ASCII bytes, and for the printable
    ones (0x20-0x7E). GPT-2's mapping: bytes 0x21-0x7E stand for themselves, the
    bytes that are not printable get U+0100 on in byte order (0x00-0x20 are
    U+0100-U+0120, space U+0120 "Ġ"; 0x7F is U+0121)."""
    visible = [chr(b) for b in range(0x21, 0x7F)]
    return visible + [chr(0x100 + i) for i in range(34)], visible + [chr(0x120)]


def random_weights(config: dict, seed: int = 0, dtype="float32") -> dict[str, mx.array]:
    """HF-layout weights for ``config`` in ``dtype`` (a name or an mx dtype), gains away from init.

    The one random-weight generator of the project (checkpoints, tests and the
    bench). Each tensor has its own key split from ``seed`` and is drawn in
    fp32 by ``mx.random`` (a 13B-width embedding in seconds, no float64
    temporaries), then cast, so the same seed gives the same values in every
    dtype up to its rounding.
    """
    mx_dtype = getattr(mx, dtype) if isinstance(dtype, str) else dtype
    dim = config["hidden_size"]
    heads, head_dim = config["num_attention_heads"], config["head_dim"]
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    proj = heads * head_dim
    keys = iter(mx.random.split(mx.random.key(seed), 12 * config["num_hidden_layers"] + 3))

    def normal(shape, std):
        return (mx.random.normal(shape, key=next(keys)) * std).astype(mx_dtype)

    def linear(out_dim, in_dim):
        return normal((out_dim, in_dim), in_dim**-0.5)

    def uniform(lo, hi, shape=(1,)):
        return mx.random.uniform(lo, hi, shape, key=next(keys)).astype(mx_dtype)

    w = {"model.embed.weight": normal((vocab, dim), 1.0)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.blocks.{i}."
        for name in ("query", "key", "value"):
            w[f"{p}attn.attn_{name}.weight"] = linear(proj, dim)
        w[f"{p}attn.attn_resid.weight"] = linear(dim, proj)
        w[f"{p}attn.head_gain.head_g"] = uniform(0.5, 2.0, (heads,))
        w[f"{p}attn_gain.a_g"] = uniform(0.3, 1.5)
        w[f"{p}mlp.mlp_gate.weight"] = linear(inter, dim)
        w[f"{p}mlp.mlp_linear.weight"] = linear(inter, dim)
        w[f"{p}mlp.mlp_resid.weight"] = linear(dim, inter)
        w[f"{p}mlp_gain.a_g"] = uniform(0.3, 1.5)
        sign = mx.where(mx.random.bernoulli(key=next(keys)), 1.0, -1.0)
        w[f"{p}embed_skip.a_g"] = (uniform(0.2, 0.8).astype(mx.float32) * sign).astype(mx_dtype)
    w["lm_head"] = linear(vocab, dim)
    w["lm_head_gain.w_g"] = uniform(1.5, 3.0)
    return w


def num_parameters(config: dict) -> int:
    """The parameter count of a Talkie model with ``config`` (gains included)."""
    dim, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, proj = config["num_attention_heads"], config["num_attention_heads"] * config["head_dim"]
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    block = 4 * dim * proj + heads + 3 * dim * inter + 3
    return 2 * vocab * dim + layers * block + 1


#: safetensors' names of the dtypes written here.
SAFETENSORS_DTYPES = {mx.float32: "F32", mx.bfloat16: "BF16", mx.float16: "F16"}


def _safetensors_header(weights: dict[str, mx.array]) -> bytes:
    """The header of a safetensors file of ``weights`` (their data in this order)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, w in weights.items():
        header[name] = {"dtype": SAFETENSORS_DTYPES[w.dtype], "shape": list(w.shape),
                        "data_offsets": [offset, offset + w.nbytes]}
        offset += w.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text


def safetensors_size(weights: dict[str, mx.array]) -> int:
    """Bytes of the safetensors file of ``weights`` (lazy arrays: nothing is evaluated)."""
    return len(_safetensors_header(weights)) + sum(w.nbytes for w in weights.values())


def save_one_by_one(path, weights: dict[str, mx.array]) -> None:
    """``mx.save_safetensors`` for lazy ``weights``, evaluating and writing one tensor
    at a time: the peak memory is about one tensor (``mx.save_safetensors``
    evaluates them all first: a 13B-sized checkpoint was heading past 24 GB).
    ``weights`` is emptied as it is written."""
    with open(path, "wb") as f:
        f.write(_safetensors_header(weights))
        for name in list(weights):
            w = weights.pop(name)
            mx.eval(w)
            # Bit-for-bit through an unsigned view: numpy has no bfloat16.
            f.write(memoryview(np.asarray(w.view({4: mx.uint32, 2: mx.uint16}[w.itemsize]))))
            del w


def write_checkpoint(
    path, config: dict, dtype: str = "float32", seed: int = 0, *, name: str | None = None
) -> Path:
    """Write a random-weight Talkie checkpoint (HF layout) + tokenizer into ``path``.

    ``config`` is a ``talkie_kernels.configs.CONFIGS`` entry (or any dict with
    its keys), ``name`` its name (recorded in config.json); ``dtype`` one of
    float32, bfloat16, float16. Returns the path.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path, vocab_size=config["vocab_size"])
    save_one_by_one(path / "model.safetensors", random_weights(config, seed, dtype))
    full = dict(config)
    full.update(
        architectures=["TalkieForCausalLM"],
        torch_dtype=dtype,
        eos_token_id=tok.token_to_id(EOS),
    )
    full[MARKER] = {"config": name, "seed": seed}
    (path / "config.json").write_text(json.dumps(full, indent=2))
    return path


# ---------------------------------------------------------------------------
# talkie-kernels init-checkpoint


def _describe(name: str) -> str:
    c = CONFIGS[name]
    return (
        f"{name} ({c['num_hidden_layers']} layers, hidden {c['hidden_size']}, "
        f"{c['num_attention_heads']} heads, vocab {c['vocab_size']}; "
        f"{num_parameters(c) / 1e6:,.1f}M parameters)"
    )


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="talkie-kernels init-checkpoint",
        description=(
            "Write a random-weight Talkie checkpoint in the Hugging Face layout "
            "(config.json, model.safetensors, a small BPE tokenizer) into DST: something "
            "to try `talkie-kernels generate / server / convert / bench --model` and "
            "`talkie_kernels.load` (or `mlx_lm.load`) on without a download. Its text is "
            "gibberish; its shapes and speed are a real Talkie's of that size."
        ),
        epilog="configs:\n" + "\n".join(f"  {_describe(n)}" for n in CONFIGS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dst", metavar="DST",
        help="output directory (created; refused if it holds files other than a checkpoint "
        "written by this command)",
    )
    parser.add_argument(
        "--config", default="talkie-2l-256", choices=list(CONFIGS), metavar="NAME",
        help=f"model shape, from talkie_kernels/configs.py: {', '.join(CONFIGS)} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"],
        help="weight dtype (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int_in(0, 2**64), default=0,
        help="random seed, 0 <= seed < 2**64 (default: %(default)s)",
    )
    return parser


def _check_destination(parser, dst: Path) -> None:
    if dst.exists() and not dst.is_dir():
        parser.error(f"DST {dst} exists and is not a directory")
    if not dst.is_dir():
        problem = uncreatable_dir("DST", str(dst))
        if problem:
            parser.error(problem)
        return
    present = sorted(p.name for p in dst.iterdir())
    if not present:
        return
    try:
        ours = MARKER in json.loads((dst / "config.json").read_text())
    except (OSError, ValueError):
        ours = False
    if not ours or set(present) - set(FILES):
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        parser.error(
            f"DST {dst} is not empty ({shown}) and is not a checkpoint written by "
            "init-checkpoint; choose a new or empty directory"
        )


def disk_problem(dst: Path, size: int) -> str | None:
    """Why the file system of ``dst`` cannot take ``size`` bytes of weights, or None
    (a model.safetensors already there is written over, so its space counts)."""
    existing = next(p for p in (dst, *dst.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    old = dst / "model.safetensors"
    free += old.stat().st_size if old.is_file() else 0
    if size > free:
        return (f"DST {dst}: the weights take {_human_bytes(size)}, but its file system has "
                f"{_human_bytes(free)} free")
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    dst = Path(args.dst).expanduser()
    _check_destination(parser, dst)
    config = CONFIGS[args.config]
    size = safetensors_size(random_weights(config, args.seed, args.dtype))  # lazy: nothing drawn
    problem = disk_problem(dst, size)
    if problem:
        parser.error(problem)
    print(f"writing a random-weight {_describe(args.config)} checkpoint, {args.dtype}, "
          f"seed {args.seed}, to {dst}: {_human_bytes(size)} of weights, written one tensor "
          "at a time ...", flush=True)
    write_checkpoint(dst, config, args.dtype, args.seed, name=args.config)
    for name in FILES:
        size = (dst / name).stat().st_size
        what = {
            "config.json": "model config (model_type talkie)",
            "model.safetensors": f"{args.dtype} weights, Hugging Face keys",
            "tokenizer.json": "byte-level BPE tokenizer",
            "tokenizer_config.json": "tokenizer settings and chat template",
        }[name]
        print(f"  {dst / name}  {_human_bytes(size)}  {what}")
    print(f"load it with talkie_kernels.load({str(dst)!r}) or mlx_lm.load, or try:\n"
          f"  talkie-kernels generate --model {dst} --prompt \"The wireless set\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
