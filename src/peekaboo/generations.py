"""Generations files: what was generated for each trace request, one JSON line per request.

The traces stage captures attention by replaying generated tokens through the
model (:mod:`peekaboo.replay`), so the tokens may come from anywhere: the
project's own generation (:class:`GenerationsWriter`, resumable per batch) or
any engine (vLLM, SGLang, an OpenAI-style API, an evaluation harness). The
format is what such engines write, so that little or no glue is needed; the
full description, with which end-of-sequence tokens are included and what a
text import means for tokenisation, is in docs/traces.md ("Generations
files"). In short, one JSON object per line with

* the request's **id**, ``id`` (or ``custom_id``, as in OpenAI batch files,
  which vLLM's ``run_batch`` writes too, or ``request_id``, as in vLLM's
  ``RequestOutput``): the mask id ``{item_id}|{variant}|{fill}`` of the
  masks table;
* the generation, first found of: ``token_ids`` (vLLM ``CompletionOutput``,
  ours), ``output_ids`` (SGLang), ``outputs[0].token_ids``/``.text`` (a vLLM
  ``RequestOutput``), ``choices[0]`` (an OpenAI-style completion, bare or as an
  OpenAI batch line's ``response.body``: ``token_ids``, ``message.content`` or
  ``text``), ``text``. Token ids win over text;
* optionally ``finish_reason`` (``stop``/``length``; SGLang's
  ``meta_info.finish_reason.type`` and the choice's ``finish_reason`` count
  too), ``retries`` (ours: out-of-memory splits), ``error`` (a request that
  failed where it ran: the trace fails with that reason);
* optionally the engine's ``prompt_token_ids`` (vLLM's ``RequestOutput`` and,
  with ``return_token_ids``, its chat completion body; ours where an engine
  wrote them), which the replay checks token for token against the prompt it
  builds (:func:`check_prompt`), and the sampled tokens'
  log-probabilities, ``logprobs`` (ours: a list of numbers; vLLM: a list of
  ``{token_id: {logprob: ...}}``; OpenAI: ``choices[0].logprobs.content[k].logprob``),
  which the replay compares with its own (a health figure, never a failure).

:func:`read_generations` validates every line (strict UTF-8 JSON through
:func:`peekaboo.jsonlines.read_lines`) and gives, per requested id, the
generation or the reason there is none (unknown id, empty text, duplicate id,
an unreadable line, missing from the file, ...); lines that belong to no
requested trace are reported, never silently dropped, and never stop the
rest. Turning text into tokens and checking them against the model
(vocabulary, context) is the replay's job (``TraceReplayer.replay``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .jsonlines import read_lines
from .logs import get_logger
from .resume import PartialBatches, partial_dir

log = get_logger("generations")

ID_KEYS = ("custom_id", "id", "request_id")  # in this order: an OpenAI batch line's own "id" is not the request's


@dataclass(frozen=True)
class Generation:
    """One request's generation: token ids or text (or the reason it failed), as a generations line holds it."""

    id: str
    token_ids: tuple[int, ...] | None = None
    text: str | None = None
    finish_reason: str | None = None
    retries: int = 0
    error: str | None = None
    line: int | None = None  # where it was read from, for messages
    prompt_token_ids: tuple[int, ...] | None = None  # the engine's prompt, checked against the replay's
    logprobs: tuple[float, ...] | None = None  # the engine's log-probability of each generated token

    @property
    def ok(self) -> bool:
        return self.error is None

    def failed(self, reason: str) -> "Generation":
        return Generation(self.id, retries=self.retries, error=reason, line=self.line)

    def to_line(self) -> dict[str, Any]:
        """The line the project writes: id, token ids (stop token included), text, finish reason, retries; or the
        error."""
        out: dict[str, Any] = {"id": self.id}
        if self.error is not None:
            out["error"] = self.error
        else:
            if self.token_ids is not None:
                out["token_ids"] = [int(t) for t in self.token_ids]
            if self.text is not None:
                out["text"] = self.text
            if self.finish_reason is not None:
                out["finish_reason"] = self.finish_reason
            if self.prompt_token_ids is not None:
                out["prompt_token_ids"] = [int(t) for t in self.prompt_token_ids]
            if self.logprobs is not None:
                out["logprobs"] = [float(x) for x in self.logprobs]
        out["retries"] = int(self.retries)
        return out


@dataclass(frozen=True)
class Problem:
    """A line of a generations file that belongs to no requested trace (or could not be read)."""

    line: int | None
    id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}{f' (id {self.id!r})' if self.id else ''}: {self.reason}"


@dataclass
class GenerationsFile:
    """What :func:`read_generations` found: per requested id a generation (maybe failed), and the problems."""

    path: Path
    generations: dict[str, Generation]
    problems: list[Problem] = field(default_factory=list)

    def get(self, request_id: str) -> Generation:
        return self.generations[request_id]

    @property
    def n_failed(self) -> int:
        return sum(not g.ok for g in self.generations.values())


# -- the prompt check: another engine's prompt against the processor's ----------------------------------
def _token(tokenizer, token_id: int) -> str:
    if tokenizer is None:
        return str(token_id)
    try:
        piece = tokenizer.convert_ids_to_tokens(int(token_id))
    except Exception:  # noqa: BLE001 - an id outside the vocabulary is named by its number alone
        piece = None
    return f"{token_id} {piece!r}" if piece is not None else str(token_id)


def check_prompt(expected: Sequence[int], engine: Sequence[int], tokenizer=None) -> str | None:
    """None when the engine's prompt ids are the processor's; else the reason, naming the first differing
    position and both tokens (and both lengths), which fails the request."""
    expected = [int(t) for t in expected]
    engine = [int(t) for t in engine]
    if expected == engine:
        return None
    k = next((i for i, (a, b) in enumerate(zip(expected, engine)) if a != b), min(len(expected), len(engine)))
    ours = _token(tokenizer, expected[k]) if k < len(expected) else "(end of prompt)"
    theirs = _token(tokenizer, engine[k]) if k < len(engine) else "(end of prompt)"
    return (f"prompt check: the engine's prompt differs from the processor's at token {k}: engine {theirs}, "
            f"processor {ours} (engine {len(engine)} tokens, processor {len(expected)})")


def line_id(value: Mapping[str, Any]) -> str | None:
    """The request id of a parsed line (see ``ID_KEYS``), or None."""
    for key in ID_KEYS:
        if key in value and value[key] is not None:
            return value[key] if isinstance(value[key], str) else None
    return None


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        message = error.get("message") or error.get("msg") or json.dumps(error, sort_keys=True)
        code = error.get("code")
        return f"{message} (code {code})" if code not in (None, "") else str(message)
    return str(error)


def _finish(value: Any) -> str | None:
    if isinstance(value, Mapping):  # SGLang: {"type": "stop" | "length" | "abort", ...}
        value = value.get("type")
    return None if value is None else str(value)


def _token_list(value: Any, key: str) -> tuple[tuple[int, ...] | None, str | None]:
    if not isinstance(value, list):
        return None, f"{key} is a {type(value).__name__}, not a list of token ids"
    for k, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            return None, f"{key}[{k}] is {t!r}, not a token id (a non-negative integer)"
    if not value:
        return None, f"empty generation ({key} is empty)"
    return tuple(value), None


def _logprobs(value: Any, ids: Sequence[int] | None) -> tuple[float, ...] | None:
    """The sampled tokens' log-probabilities from the shapes engines write them in, or None (absent, unreadable).

    A list of numbers (ours); a list of ``{token_id: {"logprob": x, ...}}`` (a vLLM ``CompletionOutput``
    serialised: the sampled token's entry is read, so the ids are needed); an OpenAI ``{"content":
    [{"logprob": x, ...}]}``. They are a health figure, so a shape not known here, or one entry per token
    not given, is left out rather than failing the trace.
    """
    if isinstance(value, Mapping):
        value = value.get("content")
    if not isinstance(value, list) or not value or (ids is not None and len(value) != len(ids)):
        return None
    out = []
    for k, entry in enumerate(value):
        if isinstance(entry, Mapping) and "logprob" in entry:
            entry = entry["logprob"]
        elif isinstance(entry, Mapping):
            if ids is None:
                return None
            entry = entry.get(str(ids[k]), entry.get(ids[k]))  # JSON keys are strings
            entry = entry.get("logprob") if isinstance(entry, Mapping) else entry
        if isinstance(entry, bool) or not isinstance(entry, (int, float)):
            return None
        out.append(float(entry))
    return tuple(out)


def _prompt_ids(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list) or not value:
        return None
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in value):
        return None
    return tuple(value)


def parse_line(value: Any, request_id: str, number: int) -> Generation:
    """The generation held by one parsed line (already known to carry ``request_id``), or the reason it holds none."""
    retries = value.get("retries", 0)
    retries = retries if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0 else 0
    g = Generation(request_id, retries=retries, line=number)
    if value.get("error") not in (None, "", {}):  # verbatim: a failed trace reads the same wherever it failed
        return g.failed(_error_text(value["error"]))
    finish = _finish(value.get("finish_reason"))
    meta = value.get("meta_info")
    if finish is None and isinstance(meta, Mapping):
        finish = _finish(meta.get("finish_reason"))
    source: Mapping[str, Any] = value
    where = ""
    prompt_ids = _prompt_ids(value.get("prompt_token_ids"))
    logprobs = value.get("logprobs")
    response = value.get("response")
    if isinstance(response, Mapping):  # an OpenAI batch line (OpenAI's Batch API, vLLM's run_batch)
        status = response.get("status_code", 200)
        body = response.get("body")
        if status != 200 or not isinstance(body, Mapping):
            detail = _error_text(body.get("error")) if isinstance(body, Mapping) and body.get("error") else ""
            return g.failed(f"the request failed where it ran: status {status}{f' ({detail})' if detail else ''}")
        source, where = body, "response.body."
        prompt_ids = _prompt_ids(body.get("prompt_token_ids"))
    if isinstance(source.get("outputs"), list):  # a vLLM RequestOutput
        outputs = source["outputs"]
        if len(outputs) != 1 or not isinstance(outputs[0], Mapping):
            return g.failed(f"{where}outputs holds {len(outputs)} entries: one generation per request expected")
        source, where = outputs[0], f"{where}outputs[0]."
        logprobs = source.get("logprobs")
    elif isinstance(source.get("choices"), list):  # an OpenAI-style completion
        choices = source["choices"]
        if len(choices) != 1 or not isinstance(choices[0], Mapping):
            return g.failed(f"{where}choices holds {len(choices)} entries: one generation per request expected")
        choice, where = choices[0], f"{where}choices[0]."
        finish = _finish(choice.get("finish_reason")) or finish
        logprobs = choice.get("logprobs")
        message = choice.get("message")
        if isinstance(message, Mapping):
            for split_key in ("reasoning_content", "reasoning"):
                if message.get(split_key):
                    return g.failed(
                        f"{where}message.{split_key} is set: the server's reasoning parser split the thinking off "
                        "the text; import the raw completion (serve without a reasoning parser) or its token ids")
            source = {"token_ids": choice.get("token_ids"), "text": message.get("content")}
        else:
            source = choice
    if finish is None:
        finish = _finish(source.get("finish_reason"))
    for key in ("token_ids", "output_ids"):
        if source.get(key) is not None:
            ids, reason = _token_list(source[key], where + key)
            if reason:
                return g.failed(reason)
            text = next((source[k] for k in ("text", "content") if isinstance(source.get(k), str)), None)
            return Generation(request_id, token_ids=ids, text=text, finish_reason=finish, retries=retries,
                              line=number, prompt_token_ids=prompt_ids, logprobs=_logprobs(logprobs, ids))
    for key in ("text", "content"):
        if key in source and source[key] is not None:
            text = source[key]
            if not isinstance(text, str):
                return g.failed(f"{where}{key} is a {type(text).__name__}, not text")
            if text == "":
                return g.failed(f"empty text ({where}{key} is empty)")
            return Generation(request_id, text=text, finish_reason=finish, retries=retries, line=number,
                              prompt_token_ids=prompt_ids)  # log-probabilities of unknown tokens: nothing to compare
    return g.failed("no generation in the line: none of token_ids, output_ids, text, outputs[0], choices[0]")


def _salvage_id(raw: bytes) -> str | None:
    """The request id of a line that could not be read, read leniently (only to name it: the line is refused)."""
    try:
        # plain json.loads: a line refused for a repeated key still names its request
        value = json.loads(raw.decode("utf-8", errors="replace"))
    except (json.JSONDecodeError, ValueError):
        return None
    return line_id(value) if isinstance(value, dict) else None


def _raw_lines(path: Path, numbers: set[int]) -> dict[int, bytes]:
    out = {}
    if numbers:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if number in numbers:
                    out[number] = raw
    return out


def _describe_unknown(request_id: str, known: set[str], known_items: set[str]) -> str:
    item = request_id.rsplit("|", 2)[0] if request_id.count("|") >= 2 else None
    if item is None:
        return "unknown id: not a mask id ({item_id}|{variant}|{fill}) of the dataset"
    if item not in known_items:
        return f"unknown item {item!r}: not in the dataset's masks table"
    return f"unknown mask variant {request_id[len(item) + 1:]!r} of item {item!r}: not in the masks table"


def read_generations(path: str | Path, wanted: Iterable[str], known: Iterable[str] | None = None) -> GenerationsFile:
    """Per requested id (``wanted``, mask ids), the generation in the file at ``path`` or why there is none.

    ``known``: every id the dataset has (all mask ids of the masks table).
    A line whose id is in neither ``wanted`` nor ``known`` is reported as
    unknown; lines of other known ids (other shards) are left alone. Without
    ``known`` only lines that cannot be read are reported.
    """
    path = Path(path)
    wanted = list(wanted)
    wanted_set = set(wanted)
    known_set = set(known) if known is not None else None
    known_items = {k.rsplit("|", 2)[0] for k in known_set if k.count("|") >= 2} if known_set is not None else set()
    problems: list[Problem] = []
    lines_of: dict[str, list[int]] = defaultdict(list)
    found: dict[str, Generation] = {}
    unreadable: dict[int, str] = {}
    for line in read_lines(path):
        if not line.ok:
            unreadable[line.number] = line.error
            continue
        value = line.value
        if not isinstance(value, dict):
            problems.append(Problem(line.number, None, f"a JSON object per line expected, got {type(value).__name__}"))
            continue
        request_id = line_id(value)
        if request_id is None:
            keys = ", ".join(ID_KEYS)
            problems.append(Problem(line.number, None, f"no request id: none of {keys} holds a string"))
            continue
        lines_of[request_id].append(line.number)
        if request_id in wanted_set:
            found.setdefault(request_id, parse_line(value, request_id, line.number))
        elif known_set is not None and request_id not in known_set:
            problems.append(Problem(line.number, request_id, _describe_unknown(request_id, known_set, known_items)))
    # lines that are not UTF-8 or not JSON: name their request where the id can still be made out
    salvaged = {n: _salvage_id(raw) for n, raw in _raw_lines(path, set(unreadable)).items()}
    orphans: dict[int, str] = {}  # unreadable lines that name no requested trace
    for number, reason in unreadable.items():
        request_id = salvaged.get(number)
        if request_id in wanted_set:
            lines_of[request_id].append(number)  # with a readable line too, the id is a duplicate
            found.setdefault(request_id, Generation(request_id, error=f"line {number}: {reason}", line=number))
        else:
            orphans[number] = reason
            problems.append(Problem(number, request_id, reason))
    generations: dict[str, Generation] = {}
    for request_id in wanted:
        numbers = sorted(lines_of.get(request_id, []))
        if len(numbers) > 1:
            generations[request_id] = Generation(
                request_id, error=f"duplicate id: lines {', '.join(map(str, numbers))} all hold it", line=numbers[0])
        elif request_id in found:
            generations[request_id] = found[request_id]
        else:
            hint = (f" ({len(orphans)} line(s) of the file could not be read, e.g. line {min(orphans)}: "
                    f"{orphans[min(orphans)]})" if orphans else "")
            generations[request_id] = Generation(request_id, error=f"missing from {path.name}{hint}")
    for request_id, numbers in lines_of.items():
        if request_id not in wanted_set and len(numbers) > 1 and (known_set is None or request_id in known_set):
            problems.append(Problem(numbers[1], request_id, f"duplicate id (also on line {numbers[0]})"))
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return GenerationsFile(path, generations, problems)


def log_problems(generations: GenerationsFile, limit: int = 20) -> None:
    """Report the file's problems and failed generations to the log (the first ``limit`` of each in full)."""
    for p in generations.problems[:limit]:
        log.warning("%s: %s", generations.path.name, p)
    if len(generations.problems) > limit:
        log.warning("%s: %d more problem lines", generations.path.name, len(generations.problems) - limit)
    failed = [g for g in generations.generations.values() if not g.ok]
    for g in failed[:limit]:
        log.warning("%s: trace %s fails: %s", generations.path.name, g.id, g.error)
    if len(failed) > limit:
        log.warning("%s: %d more traces fail", generations.path.name, len(failed) - limit)


class GenerationsWriter:
    """Writes a generations file batch by batch, resumably (the trace store's partial-folder mechanism).

    ``plan``: the batches (lists of request ids) in the order they run;
    ``order``: the ids in the file's line order (default: the plan's);
    ``fingerprint``: what must match for a resume (config and code hashes,
    model id). The file appears, complete, only at :meth:`finalize`.
    """

    def __init__(self, path: str | Path, plan: Sequence[Sequence[str]], fingerprint: Mapping[str, Any] | None = None,
                 order: Sequence[str] | None = None):
        self.path = Path(path)
        self.plan = [list(b) for b in plan]
        planned = [i for b in self.plan for i in b]
        self.order = list(order) if order is not None else planned
        if sorted(self.order) != sorted(planned) or len(set(planned)) != len(planned):
            raise ValueError(f"{self.path}: the line order and the batches must hold the same distinct ids")
        self.batches = PartialBatches(partial_dir(self.path), len(self.plan),
                                      {"plan": self.plan, "order": self.order, **dict(fingerprint or {})},
                                      (".jsonl",), self.path.name)

    def start(self) -> set[int]:
        return self.batches.start()

    def write_batch(self, index: int, generations: Sequence[Generation]) -> None:
        ids = [g.id for g in generations]
        if ids != self.plan[index]:
            raise ValueError(f"batch {index}: generations for {ids}, planned {self.plan[index]}")
        text = "".join(json.dumps(g.to_line(), ensure_ascii=False) + "\n" for g in generations)
        self.batches.write(index, {".jsonl": text.encode("utf-8")})

    def finalize(self) -> Path:
        missing = self.batches.missing()
        if missing:
            raise RuntimeError(f"{self.path}: batches {missing} are not finished")
        by_id: dict[str, bytes] = {}
        for k in range(len(self.plan)):
            for raw in self.batches.files(k)[".jsonl"].read_bytes().splitlines(keepends=True):
                by_id[json.loads(raw)["id"]] = raw
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            for request_id in self.order:
                fh.write(by_id[request_id])
        tmp.replace(self.path)
        self.batches.remove()
        log.info("wrote %s: %d generations", self.path, len(self.order))
        return self.path
