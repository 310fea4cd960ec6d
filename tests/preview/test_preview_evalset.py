"""Own evaluation sets: multiple choice scored by log-likelihood (accuracies equal a hand computation from per-token
log-probabilities, each from its own forward of the prefix), prompt/expected by the greedy answer, malformed lines
named by file and line."""

import json

import pytest
import torch

from studio.errors import StudioError
from studio.preview import TextRequest, load_eval_set, render_text


@pytest.fixture(scope="module")
def lm(lm_family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(lm_family["a"]), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(lm_family["a"])))


def write(path, items):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))
    return path


@torch.no_grad()
def by_hand(model, tok, question, choice):
    """(sum, count) of log p(choice token | all tokens before it), one forward of each prefix."""
    ctx = tok(question)["input_ids"]
    ids = tok(question + " " + choice)["input_ids"]
    total = 0.0
    for i in range(len(ctx), len(ids)):
        logits = model(input_ids=torch.tensor([ids[:i]])).logits[0, -1]
        total += torch.log_softmax(logits, -1)[ids[i]].item()
    return total, len(ids) - len(ctx)


def argmax(xs):
    return max(range(len(xs)), key=lambda i: xs[i])


QUESTIONS = [("w3 w4 w5", ["w6", "w7 w8", "w9 w10 w11"]), ("w12 w13", ["w14", "w15"]),
             ("w20", ["w21 w22", "w23", "w24 w25 w26 w27"])]


def test_multiple_choice_accuracy_equals_the_hand_computation(lm, tmp_path):
    model, tok = lm
    scored = [[by_hand(model, tok, q, c) for c in cs] for q, cs in QUESTIONS]
    norm = [argmax([s / n for s, n in sc]) for sc in scored]
    raw = [argmax([s for s, _ in sc]) for sc in scored]
    # answers chosen so the accuracies are known: item 1 right (by mean), item 2 wrong (by mean), item 3 = raw choice
    answers = [norm[0], (norm[1] + 1) % 2, raw[2]]
    items = [{"question": q, "choices": cs, "answer": a if i != 1 else cs[a]}
             for i, ((q, cs), a) in enumerate(zip(QUESTIONS, answers))]
    path = write(tmp_path / "mc.jsonl", items)
    out = render_text(model, tok, TextRequest(eval_set=str(path)))
    correct_norm = [n == a for n, a in zip(norm, answers)]
    correct_raw = [r == a for r, a in zip(raw, answers)]
    assert correct_norm[:2] == [True, False] and correct_raw[2]
    assert out["metric"] == "accuracy"
    assert out["per_task"] == {"choice": pytest.approx(100 * sum(correct_norm) / 3)}
    table = out["table"]
    assert table["accuracy"]["choice_raw"] == pytest.approx(100 * sum(correct_raw) / 3)
    assert table["file"] == str(path) and table["items"] == 3 and "choice" in table["scoring"]
    for row, sc, (q, cs), a in zip(table["rows"], scored, QUESTIONS, answers):
        assert row["kind"] == "choice" and row["prompt"] == q and row["expected"] == cs[a]
        assert row["loglik"] == pytest.approx([s for s, _ in sc], abs=1e-4)
        assert row["tokens"] == [n for _, n in sc] == [len(c.split()) for c in cs]
    assert [r["line"] for r in table["rows"]] == [1, 2, 3]


def test_prompt_expected_by_exact_match_or_contains(lm, tmp_path):
    model, tok = lm
    answers = {}
    for p in ("w3 w4", "w30 w31 w32"):
        ids = tok(p, return_tensors="pt")["input_ids"]
        gen = model.generate(ids, do_sample=False, max_new_tokens=6, pad_token_id=0)
        answers[p] = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    first = answers["w3 w4"].split()[0]
    items = [{"prompt": "w3 w4", "expected": first}, {"prompt": "w30 w31 w32", "expected": answers["w30 w31 w32"]},
             {"prompt": "w3 w4", "expected": "w63 w63 w63 w63 w63 w63 w63"}]
    path = write(tmp_path / "qa.jsonl", items)
    contains = render_text(model, tok, TextRequest(eval_set=str(path), max_new_tokens=6))
    assert [r["correct"] for r in contains["table"]["rows"]] == [True, True, False]
    assert contains["per_task"] == {"expected": pytest.approx(200 / 3)} and contains["table"]["match"] == "contains"
    assert [r["answer"] for r in contains["table"]["rows"]] == [answers["w3 w4"], answers["w30 w31 w32"],
                                                                answers["w3 w4"]]
    exact = render_text(model, tok, TextRequest(eval_set=str(path), max_new_tokens=6, match="exact"))
    expect = [answers["w3 w4"].strip() == first, True, False]
    assert [r["correct"] for r in exact["table"]["rows"]] == expect
    assert exact["per_task"]["expected"] == pytest.approx(100 * sum(expect) / 3)
    assert "equals" in exact["table"]["scoring"]["expected"]


def test_a_mixed_set_the_budget_and_a_text_beside_it(lm, tmp_path):
    model, tok = lm
    items = [{"question": q, "choices": cs, "answer": 0} for q, cs in QUESTIONS]
    items.insert(1, {"prompt": "w3 w4", "expected": "w5"})
    path = write(tmp_path / "mixed.jsonl", ["", *items, "  "])
    out = render_text(model, tok, TextRequest(eval_set=str(path), max_new_tokens=4))
    assert set(out["per_task"]) == {"choice", "expected"} and out["table"]["items"] == 4
    assert [r["line"] for r in out["table"]["rows"]] == [2, 3, 4, 5]  # blank lines skipped, numbering kept
    cut = render_text(model, tok, TextRequest(eval_set=str(path), eval_items=2, max_new_tokens=4))
    assert cut["table"]["items"] == 2 and "the first 2 items" in cut["notes"][0]
    # a text too: perplexity is the metric, the set's accuracies stay in the table
    both = render_text(model, tok, TextRequest(eval_set=str(path), text="w3 w4 w5 w6 w7", max_new_tokens=4))
    assert both["metric"] == "perplexity" and set(both["per_task"]) == {"text"}
    assert both["table"]["accuracy"] == out["table"]["accuracy"]


@pytest.mark.parametrize("line, what", [
    ('{"question": "w3", "choices": ["w4"], "answer": 0}', "at least two"),
    ('{"question": "w3", "choices": ["w4", "w5"], "answer": 2}', "not an index"),
    ('{"question": "w3", "choices": ["w4", "w5"], "answer": "w6"}', "neither an index nor one of the choices"),
    ('{"question": "w3", "choices": ["w4", "w5"], "answer": true}', "index of the right choice"),
    ('{"prompt": "w3"}', '"expected" must be'),
    ('{"text": "w3"}', "neither a multiple-choice item nor a prompt/expected pair"),
    ('["w3", "w4"]', "JSON object"),
    ('{"question": "w3", "choices": ["w4", "w5"], "answer": 0', "not JSON"),
])
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, line, what):
    path = write(tmp_path / "bad.jsonl", [{"prompt": "w3", "expected": "w4"}, "", line])
    with pytest.raises(StudioError) as err:
        load_eval_set(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: line 3: ") and what in msg and "\n" not in msg
    items, more = load_eval_set(path, limit=1)  # the budget: line 3 is never read
    assert [i.line for i in items] == [1] and more


def test_missing_and_empty_sets(tmp_path):
    with pytest.raises(StudioError, match="evaluation set not found"):
        load_eval_set(tmp_path / "nope.jsonl")
    with pytest.raises(StudioError, match="no items"):
        load_eval_set(write(tmp_path / "empty.jsonl", ["", " "]))
