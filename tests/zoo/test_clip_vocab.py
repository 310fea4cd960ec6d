"""The diffusion zoo's small CLIP vocabulary: CLIP's BPE algorithm, CLIP's file layout, whole-word prompt tokens."""

from transformers import CLIPTokenizer

from studio.zoo import clip_vocab as C


def test_byte_symbols_are_clips_printable_table():
    s = C.byte_symbols()
    assert len(s) == len(set(s)) == 256
    assert s[:94] == [chr(c) for c in range(ord("!"), ord("~") + 1)]      # printable ASCII stands for itself
    assert s[-68:] == [chr(256 + i) for i in range(68)]                 # the rest moves past Latin-1
    assert "Ġ" in s and " " not in s                                    # the space byte is U+0120, as in GPT-2


def test_word_merges_follow_the_ranks():
    merges = [("e", "n</w>"), ("s", "e"), ("v", "en</w>"), ("se", "ven</w>"), ("x", "y")]
    ranks = {m: r for r, m in enumerate(merges)}
    assert C.word_merges("seven", ranks) == [("e", "n</w>"), ("s", "e"), ("v", "en</w>"), ("se", "ven</w>")]
    assert C.word_merges("a", ranks) == []                               # one symbol: nothing to join
    # only what the words need, in rank order (not in the order they were met)
    assert C.derive_merges(merges, ["even", "seven"]) == merges[:4]
    assert C.derive_merges(merges, ["ns"]) == []


def test_vocab_layout_is_clips():
    merges = [("a", "b"), ("ab", "c</w>")]
    v = C.vocab(merges)
    assert len(v) == 256 * 2 + 2 + 2
    assert v["!"] == 0 and v["!</w>"] == 256 and v["ab"] == 512 and v["abc</w>"] == 513
    assert v[C.BOS] == 514 and v[C.EOS] == 515


def test_committed_vocabulary_tokenizes_prompt_words_whole(tmp_path):
    tok = CLIPTokenizer.from_pretrained(str(C.write_tokenizer_files(tmp_path)), model_max_length=77)
    assert len(tok) == 512 + len(C.small_merges()) + 2
    ids = tok("An Eight on the LEFT")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [C.BOS, "an</w>", "eight</w>", "on</w>", "the</w>", "left</w>", C.EOS]
    for w in C.WORDS:
        assert tok.convert_ids_to_tokens(tok(w)["input_ids"])[1:-1] == [w + "</w>"], w
    # a word outside the list still tokenizes, into smaller known pieces, never into unknowns
    pieces = tok.convert_ids_to_tokens(tok("zebra")["input_ids"])[1:-1]
    assert "".join(pieces).replace("</w>", "") == "zebra" and len(pieces) > 1
    padded = tok("a seven", padding="max_length", max_length=77)["input_ids"]
    assert len(padded) == 77 and padded[-1] == tok.convert_tokens_to_ids(C.EOS)


def test_committed_merges_are_clips_own_for_the_prompt_words(tmp_path):
    """Derived again from the studio's shipped full CLIP merge list, the committed excerpt is the same; and every
    prompt word splits into the same tokens under the full CLIP tokenizer as under the small one."""
    from studio.preview.sd_configs import CLIP_BPE

    full = C.read_clip_merges()
    assert len(full) == C.CLIP_MERGES
    assert C.derive_merges(full) == C.small_merges()
    small = CLIPTokenizer.from_pretrained(str(C.write_tokenizer_files(tmp_path)), model_max_length=77)
    clip = CLIPTokenizer(vocab=str(CLIP_BPE / "vocab.json"), merges=str(CLIP_BPE / "merges.txt"))
    text = "the number 7 on the left, an eight in the middle: " + " ".join(C.WORDS)
    assert small.tokenize(text) == clip.tokenize(text)
