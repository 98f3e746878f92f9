"""Generations files: the formats engines write, bad lines, and the resumable writer."""

from __future__ import annotations

import codecs
import json

import pytest

from peekaboo.generations import Generation, GenerationsWriter, read_generations

KNOWN = ["q0|base|none", "q0|drop:0|gray", "q1|base|none", "q1|drop:0|gray", "q2|base|none", "q2|drop:0|gray",
         "q3|base|none", "q3|drop:0|gray", "q4|base|none", "q4|drop:0|gray"]


def write_lines(path, lines) -> None:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")


def test_reads_the_formats_engines_write(tmp_path):
    """One line per request as each engine writes it (fields as documented by each: vLLM's RequestOutput /
    CompletionOutput, SGLang's /generate response, an OpenAI batch output line, a bare chat completion)."""
    path = tmp_path / "gen.jsonl"
    write_lines(path, [
        # ours
        {"id": "q0|base|none", "token_ids": [5, 6, 7], "text": "abc", "finish_reason": "stop", "retries": 1},
        # vLLM RequestOutput, serialised with its outputs
        {"request_id": "q0|drop:0|gray", "prompt": "...", "prompt_token_ids": [1, 2],
         "outputs": [{"index": 0, "text": " Paris.", "token_ids": [3681, 29889, 13], "cumulative_logprob": None,
                      "finish_reason": "length", "stop_reason": None}], "finished": True},
        # SGLang /generate
        {"id": "q1|base|none", "text": "hello", "output_ids": [8, 9],
         "meta_info": {"id": "q1|base|none", "finish_reason": {"type": "stop", "matched": 151645},
                       "prompt_tokens": 7, "completion_tokens": 2}},
        # OpenAI batch output line (OpenAI Batch API, vLLM run_batch): the request id is custom_id
        {"id": "batch_req_1", "custom_id": "q1|drop:0|gray",
         "response": {"status_code": 200, "request_id": "req_1",
                      "body": {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Step 1: red."},
                                            "logprobs": None, "finish_reason": "length"}]}},
         "error": None},
        # a bare completion with the request's id added by the glue; completions endpoint: choices[0].text
        {"id": "q2|base|none", "choices": [{"index": 0, "text": "Answer: B", "finish_reason": "stop"}]},
        # vLLM's OpenAI server with return_token_ids: choices[0].token_ids win over the text
        {"id": "q2|drop:0|gray", "choices": [{"index": 0, "message": {"content": "x"}, "token_ids": [4, 4],
                                              "finish_reason": "stop"}]},
    ])
    got = read_generations(path, KNOWN[:6], known=KNOWN)
    assert got.problems == [] and got.n_failed == 0
    g = got.generations
    assert g["q0|base|none"] == Generation("q0|base|none", (5, 6, 7), "abc", "stop", retries=1, line=1)
    assert g["q0|drop:0|gray"].token_ids == (3681, 29889, 13) and g["q0|drop:0|gray"].finish_reason == "length"
    assert g["q1|base|none"].token_ids == (8, 9) and g["q1|base|none"].finish_reason == "stop"
    assert g["q1|drop:0|gray"].text == "Step 1: red." and g["q1|drop:0|gray"].token_ids is None
    assert g["q1|drop:0|gray"].finish_reason == "length"
    assert g["q2|base|none"].text == "Answer: B" and g["q2|base|none"].finish_reason == "stop"
    assert g["q2|drop:0|gray"].token_ids == (4, 4)


def test_bad_lines_fail_their_trace_or_are_reported_and_the_rest_goes_on(tmp_path):
    path = tmp_path / "gen.jsonl"
    write_lines(path, [
        codecs.BOM_UTF8 + json.dumps({"id": "q0|base|none", "text": "fine"}).encode(),  # a BOM is read as such
        {"id": "q0|drop:0|gray", "text": ""},  # empty text
        b'{"id": "q1|base|none", "text": "caf\xe9"}',  # Latin-1, not UTF-8
        b'{"id": "q1|drop:0|gray", "text": ',  # not JSON, id unreadable
        {"id": "q2|base|none", "token_ids": [1, "2"]},
        {"id": "q2|drop:0|gray", "text": "one"},
        {"id": "q2|drop:0|gray", "text": "two"},  # duplicate
        {"id": "zz|base|none", "text": "who?"},  # unknown item
        {"id": "q0|drop:7|gray", "text": "which?"},  # unknown mask variant of a known item
        ["not", "an", "object"],
        {"text": "no id"},
        {"custom_id": "q3|base|none", "response": {"status_code": 500, "body": {"error": {"message": "overloaded"}}},
         "error": None},
        {"custom_id": "q3|drop:0|gray", "error": {"code": "timeout", "message": "request timed out"}},
        {"id": "q4|base|none",
         "choices": [{"message": {"content": "Answer: A", "reasoning_content": "I think..."},
                      "finish_reason": "stop"}]},
        {"id": "q4|drop:0|gray", "text": "other shard, known: left alone"},
        {"id": "q4|drop:0|gray", "token_ids": []},  # a duplicate of an id nobody asked for: reported
    ])
    wanted = KNOWN[:9] + ["q1|drop:1|gray"]
    got = read_generations(path, wanted, known=KNOWN + ["q1|drop:1|gray"])
    g = got.generations
    assert g["q0|base|none"].ok and g["q0|base|none"].text == "fine"
    assert "empty text" in g["q0|drop:0|gray"].error
    assert g["q1|base|none"].error.startswith("line 3: not valid UTF-8: byte 0xe9")
    assert "token_ids[1] is '2'" in g["q2|base|none"].error
    assert g["q2|drop:0|gray"].error == "duplicate id: lines 6, 7 all hold it"
    assert "status 500 (overloaded)" in g["q3|base|none"].error
    assert g["q3|drop:0|gray"].error == "request timed out (code timeout)"
    assert "reasoning_content is set" in g["q4|base|none"].error
    # missing, and the file had an unreadable line that may have been its
    assert g["q1|drop:0|gray"].error.startswith("missing from gen.jsonl (1 line(s) of the file could not be read")
    assert g["q1|drop:1|gray"].error.startswith("missing from gen.jsonl")
    problems = {p.line: (p.id, p.reason) for p in got.problems}
    assert problems[4][0] is None and problems[4][1].startswith("not JSON")
    assert problems[8] == ("zz|base|none", "unknown item 'zz': not in the dataset's masks table")
    assert problems[9] == ("q0|drop:7|gray",
                           "unknown mask variant 'drop:7|gray' of item 'q0': not in the masks table")
    assert "a JSON object per line expected, got list" in problems[10][1]
    assert "no request id" in problems[11][1]
    assert problems[16] == ("q4|drop:0|gray", "duplicate id (also on line 15)")
    assert sorted(problems) == [4, 8, 9, 10, 11, 16]
    # without the dataset's ids no id is unknown; unreadable lines and duplicates are still reported
    assert [p.line for p in read_generations(path, ["q0|base|none"]).problems] == [3, 4, 7, 10, 11, 16]


def test_a_line_round_trips(tmp_path):
    path = tmp_path / "gen.jsonl"
    lines = [Generation("a|base|none", (1, 2, 151645), "hé\u2028llo", "stop", retries=2),
             Generation("b|base|none", error="image 0 (x.png) could not be loaded", retries=1)]
    path.write_text("".join(json.dumps(g.to_line(), ensure_ascii=False) + "\n" for g in lines), encoding="utf-8")
    got = read_generations(path, ["a|base|none", "b|base|none"]).generations
    assert got["a|base|none"] == Generation("a|base|none", (1, 2, 151645), "hé\u2028llo", "stop", retries=2, line=1)
    assert got["b|base|none"].error == "image 0 (x.png) could not be loaded"
    assert got["b|base|none"].retries == 1


def test_writer_resumes_and_writes_lines_in_order(tmp_path):
    path = tmp_path / "gens" / "shard-0.jsonl"
    plan = [["b", "a"], ["c"]]

    def gens(ids):
        return [Generation(i, (len(i), 7), f"text {i}", "length") for i in ids]

    first = GenerationsWriter(path, plan, {"config_hash": "x"}, order=["a", "b", "c"])
    assert first.start() == set()
    first.write_batch(0, gens(["b", "a"]))
    with pytest.raises(ValueError, match="planned"):
        first.write_batch(1, gens(["a"]))
    partial = tmp_path / "gens" / "shard-0.jsonl.partial"
    assert (partial / "batch-00000.jsonl").is_file() and not path.exists()
    # a killed job comes back: the finished batch is kept
    again = GenerationsWriter(path, plan, {"config_hash": "x"}, order=["a", "b", "c"])
    assert again.start() == {0}
    with pytest.raises(RuntimeError, match=r"batches \[1\] are not finished"):
        again.finalize()
    again.write_batch(1, gens(["c"]))
    again.finalize()
    assert not partial.exists()
    assert [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()] == ["a", "b", "c"]
    assert read_generations(path, ["a", "b", "c"]).generations["b"].token_ids == (1, 7)
    # another config: the partial folder of the first is discarded
    GenerationsWriter(path, plan, {"config_hash": "x"}).start()
    other = GenerationsWriter(path, plan, {"config_hash": "y"})
    (partial / "batch-00000.jsonl").write_text("{}\n")
    assert other.start() == set() and not (partial / "batch-00000.jsonl").exists()


def test_prompt_ids_and_sampled_logprobs_are_read_from_each_engines_shape(tmp_path):
    """The engine's prompt ids (checked by the replay) and its sampled tokens' log-probabilities (compared with
    the replay's), as each engine writes them; a list that is not one per token is left out, not failed."""
    path = tmp_path / "gen.jsonl"
    write_lines(path, [
        # ours (the vLLM engine's lines)
        {"id": "q0|base|none", "token_ids": [5, 6], "logprobs": [-0.5, -1.25], "prompt_token_ids": [1, 2, 3]},
        # vLLM RequestOutput: logprobs per position, {token_id: Logprob}, the sampled token among them
        {"request_id": "q0|drop:0|gray", "prompt_token_ids": [1, 2],
         "outputs": [{"token_ids": [7, 8], "text": "ab", "finish_reason": "stop",
                      "logprobs": [{"9": {"logprob": -3.0}, "7": {"logprob": -0.1, "rank": 1}},
                                   {"8": {"logprob": -0.2, "rank": 1}}]}]},
        # vLLM run_batch with return_token_ids and logprobs: prompt ids on the body, logprobs on the choice
        {"id": "b1", "custom_id": "q1|base|none",
         "response": {"status_code": 200, "body": {"prompt_token_ids": [4, 4, 4], "choices": [
             {"index": 0, "message": {"content": "x"}, "token_ids": [3, 2, 1], "finish_reason": "length",
              "logprobs": {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": []},
                                       {"token": "b", "logprob": -2.0, "top_logprobs": []},
                                       {"token": "c", "logprob": -3.0, "top_logprobs": []}]}}]}},
         "error": None},
        # one log-probability short: left out
        {"id": "q1|drop:0|gray", "token_ids": [5, 6], "logprobs": [-0.5]},
        # a text: its tokens are the replay's, so an engine's log-probabilities have nothing to line up with
        {"id": "q2|base|none", "text": "hi", "logprobs": [-0.5], "prompt_token_ids": [9]},
    ])
    g = read_generations(path, KNOWN[:5], known=KNOWN).generations
    assert g["q0|base|none"].logprobs == (-0.5, -1.25) and g["q0|base|none"].prompt_token_ids == (1, 2, 3)
    assert g["q0|drop:0|gray"].logprobs == (-0.1, -0.2) and g["q0|drop:0|gray"].prompt_token_ids == (1, 2)
    assert g["q1|base|none"].logprobs == (-1.0, -2.0, -3.0) and g["q1|base|none"].prompt_token_ids == (4, 4, 4)
    assert g["q1|drop:0|gray"].ok and g["q1|drop:0|gray"].logprobs is None
    assert g["q2|base|none"].logprobs is None and g["q2|base|none"].prompt_token_ids == (9,)
    # and what the project writes reads back the same
    line = Generation("q0|base|none", (5, 6), logprobs=(-0.5, -1.25), prompt_token_ids=(1, 2, 3)).to_line()
    assert line == {"id": "q0|base|none", "token_ids": [5, 6], "prompt_token_ids": [1, 2, 3],
                    "logprobs": [-0.5, -1.25], "retries": 0}
