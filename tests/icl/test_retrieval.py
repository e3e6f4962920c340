"""Retrieval strategies and embedders: duplicates rank first, the query is never its own demo, RS is
seeded, SQA uses the (oracle) answer, the documented order (most similar last) holds, errors come first."""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmmops.data.schemas import VQAAnswer, VQAItem
from lmmops.icl.embedders import (
    ClipEmbedder,
    ImageEmbedder,
    JointEmbedder,
    ModelImageEmbedder,
    PixelImageEmbedder,
    TextEmbedder,
    l2_normalize,
)
from lmmops.icl.retrieval import STRATEGIES, Retriever, _interleave, qa_text, retrieve
from lmmops.models.adapters import image_feature_families

torch.set_num_threads(1)

QUESTIONS = [
    "What color is the bus?", "How many people are in the picture?", "Is there a dog?", "What is the man holding?",
    "Where is the cat sitting?", "What sport is being played?", "Is it raining?", "What is on the table?",
    "What shape is the sign?", "Who is wearing a hat?", "What time of day is it?", "Is the light on?",
]
ANSWERS = ["red", "2", "yes", "umbrella", "couch", "tennis", "no", "apple", "octagon", "woman", "night", "blue"]


def make_item(qid: int, image_id: int, question: str, answer: str, image_path: Path, split: str = "train") -> VQAItem:
    answers = tuple(VQAAnswer(answer, "yes", i + 1) for i in range(10))
    return VQAItem(question_id=qid, image_id=image_id, question=question, question_type="what", answer_type="other",
                   multiple_choice_answer=answer, answers=answers, image_path=image_path, split=split)


def random_image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def support(tmp_path_factory: pytest.TempPathFactory) -> list[VQAItem]:
    """36 items on 12 images, 3 questions per image (as VQAv2 asks several questions per image)."""
    root = tmp_path_factory.mktemp("support")
    items = []
    for image_id in range(12):
        path = random_image(root / f"img{image_id}.png", image_id)
        for j in range(3):
            n = image_id * 3 + j
            items.append(make_item(1000 + n, image_id, QUESTIONS[(image_id + 5 * j) % 12], ANSWERS[(n * 7) % 12], path))
    return items


class BagOfWords:
    """A deterministic text embedder for logic tests: hashed word counts. Records what it embeds."""

    name, dim, shared_space = "bow-test", 64, False

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.seen += list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace("?", " ").split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1
        return l2_normalize(out)


class FailingImageEmbedder(ImageEmbedder):
    name, dim = "must-not-run", 4

    def embed_images(self, images: Sequence[object]) -> np.ndarray:
        raise AssertionError("validation must happen before any embedding")


class PixelBowJoint(JointEmbedder):
    """A stand-in joint space (both sides hashed to 64 dims) to exercise the cross-modal code path only."""

    name, dim = "joint-test", 64

    def embed_images(self, images: Sequence[object]) -> np.ndarray:
        pix = PixelImageEmbedder().embed_images(images)  # type: ignore[arg-type]
        return l2_normalize(pix[:, :64])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return BagOfWords().embed_texts(texts)


@pytest.fixture(scope="module")
def minilm() -> TextEmbedder:
    return TextEmbedder()


# ----- embedders ------------------------------------------------------------------------------------


def test_minilm_reproduces_the_sentence_transformers_recipe(minilm: TextEmbedder) -> None:
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    e = minilm.embed_texts(sentences)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # all-MiniLM-L6-v2's published similarity for this pair (sentence-transformers model card example)
    assert float(e[0] @ e[1]) == pytest.approx(0.7553, abs=2e-3)
    assert float(e[0] @ e[2]) < 0.1
    # batching does not change the vectors (padding is masked out of the mean)
    np.testing.assert_allclose(minilm.embed_texts(["A man is eating food."]), e[:1], atol=1e-5)


def test_pixel_embedder_is_deterministic_and_duplicates_have_cosine_one(tmp_path: Path) -> None:
    a, b = random_image(tmp_path / "a.png", 1), random_image(tmp_path / "b.png", 2)
    shutil.copy(a, tmp_path / "a_copy.png")
    emb = PixelImageEmbedder()
    v = emb.embed_images([a, b, tmp_path / "a_copy.png", Image.open(a)])
    assert v.shape == (4, emb.dim) == (4, 280) and emb.name == "pixels-v1"
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[2]) == pytest.approx(1.0, abs=1e-6) and float(v[0] @ v[1]) < 0.99
    np.testing.assert_array_equal(v[0], v[3])


@pytest.mark.parametrize("family", image_feature_families())
def test_model_image_embedder_pools_the_lmm_vision_features(tmp_path: Path, family: str) -> None:
    from lmmops.models import build_tiny

    model, processor = build_tiny(family, seed=0)
    emb = ModelImageEmbedder(model, processor, batch_size=2)  # 2 batches: rows must not mix across batches
    paths = [random_image(tmp_path / f"{i}.png", i) for i in range(3)]
    v = emb.embed_images([*paths, paths[0]])
    assert v.shape == (4, 64) and v.dtype == np.float32 and emb.name.startswith(f"model:{family}:")
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v[0], v[3], atol=1e-5)
    assert ModelImageEmbedder(model, processor).name == emb.name  # stable
    assert ModelImageEmbedder(build_tiny(family, seed=1)[0], processor).name != emb.name  # other weights


def test_model_image_embedder_names_supported_families() -> None:
    from lmmops.models import build_tiny

    model, tokenizer = build_tiny("llama")
    with pytest.raises(ValueError, match=r"families idefics2, idefics3, llava, qwen2_vl, qwen2_5_vl; got 'llama'"):
        ModelImageEmbedder(model, tokenizer)
    model, processor = build_tiny("idefics")
    with pytest.raises(ValueError, match=r"supports the families .*got 'idefics'"):
        ModelImageEmbedder(model, processor)


# ----- strategies -------------------------------------------------------------------------------------


def test_si_exact_duplicate_image_ranks_first(support: list[VQAItem], tmp_path: Path) -> None:
    query_img = random_image(tmp_path / "query.png", 999)
    dup = shutil.copy(query_img, tmp_path / "dup.png")
    dup_item = make_item(5000, 500, "Is this a duplicate?", "yes", Path(dup))
    query = make_item(9000, 900, "What is this?", "no", query_img, split="val")
    rows = retrieve("SI", [query], [*support, dup_item], k=4, image_embedder=PixelImageEmbedder())
    assert rows[0][-1] == len(support)  # most similar LAST


def test_sq_exact_duplicate_question_ranks_first(support: list[VQAItem], minilm: TextEmbedder,
                                                 tmp_path: Path) -> None:
    query = make_item(9001, 901, "Which animal is sleeping on the red sofa?", "cat",
                      random_image(tmp_path / "q.png", 5), split="val")
    dup_item = make_item(5001, 501, "Which animal is sleeping on the red sofa?", "dog", support[0].image_path)
    pool = [*support, dup_item]
    rows = retrieve("SQ", [query], pool, k=5, text_embedder=minilm)
    assert rows[0][-1] == len(support)
    sims = minilm.embed_texts([pool[r].question for r in rows[0]]) @ minilm.embed_texts([query.question])[0]
    assert (np.diff(sims) >= -1e-6).all()  # ascending similarity: most similar last


ALL_RETRIEVING = ["RS", "SI", "SQ", "SQA", "SQA-pseudo", "SI->Q", "SQ->I", "mixed", "I->SQ", "Q->SI"]


@pytest.mark.parametrize("strategy", ALL_RETRIEVING)
def test_query_is_never_its_own_demo(support: list[VQAItem], strategy: str) -> None:
    image_emb = PixelBowJoint() if STRATEGIES[strategy].cross_modal else PixelImageEmbedder()
    r = Retriever(support, text_embedder=BagOfWords(), image_embedder=image_emb)  # type: ignore[arg-type]
    predictions = {q.question_id: "yes" for q in support}
    k = len(support) - 3  # every allowed item must be used: the excluded ones can hide nowhere
    rows = r.retrieve(strategy, support, k, seed=3, predictions=predictions)
    for query, row in zip(support, rows, strict=True):
        assert len(row) == k and len(set(row)) == k
        assert all(support[i].question_id != query.question_id for i in row)
        if STRATEGIES[strategy].uses_images:
            assert all(support[i].image_id != query.image_id for i in row)


def test_exclude_self_false_allows_the_query(support: list[VQAItem]) -> None:
    rows = retrieve("SI", support[:3], support, k=1, image_embedder=PixelImageEmbedder(), exclude_self=False)
    assert [support[r[0]].image_id for r in rows] == [q.image_id for q in support[:3]]


def test_rs_is_seeded_deterministic_and_batch_independent(support: list[VQAItem]) -> None:
    r = Retriever(support)
    a = r.retrieve("RS", support[:10], 5, seed=7)
    assert a == r.retrieve("RS", support[:10], 5, seed=7)
    assert a != r.retrieve("RS", support[:10], 5, seed=8)
    assert r.retrieve("RS", [support[4]], 5, seed=7)[0] == a[4]  # the same query gets the same demos alone
    assert len({tuple(sorted(x)) for x in a}) > 1  # different queries, different draws


def test_sqa_is_an_oracle_that_uses_the_query_answer(support: list[VQAItem], tmp_path: Path) -> None:
    assert STRATEGIES["SQA"].oracle and not STRATEGIES["SQA-pseudo"].oracle
    assert not any(s.oracle for n, s in STRATEGIES.items() if n != "SQA")
    img = support[0].image_path
    pool = [*support, make_item(7001, 701, "What fruit is in the bowl?", "banana", img),
            make_item(7002, 702, "What fruit is in the bowl?", "orange", img)]
    bow = BagOfWords()
    r = Retriever(pool, text_embedder=bow)  # type: ignore[arg-type]
    q_banana = make_item(8000, 800, "What fruit is in the bowl?", "banana", img, split="val")
    q_orange = make_item(8000, 800, "What fruit is in the bowl?", "orange", img, split="val")
    sqa = [r.retrieve("SQA", [q], 1)[0][0] for q in (q_banana, q_orange)]
    assert sqa == [len(support), len(support) + 1]  # the candidate with the query's answer wins
    sq = [r.retrieve("SQ", [q], 2)[0] for q in (q_banana, q_orange)]
    assert sq[0] == sq[1]  # SQ ignores the answer
    assert qa_text(q_banana.question, "banana") in bow.seen
    pseudo = r.retrieve("SQA-pseudo", [q_banana], 1, predictions={8000: "orange"})[0][0]
    assert pseudo == len(support) + 1  # the prediction, not the label, is used
    assert qa_text(q_banana.question, "orange") in bow.seen


def test_ordering_most_similar_last_for_si_and_rerank(support: list[VQAItem]) -> None:
    pix, bow = PixelImageEmbedder(), BagOfWords()
    r = Retriever(support, text_embedder=bow, image_embedder=pix)  # type: ignore[arg-type]
    queries = support[:6]
    sv, qv = r.support_vectors("image"), pix.embed_images([q.image_path for q in queries])
    for qi, row in enumerate(r.retrieve("SI", queries, 8)):
        assert (np.diff(sv[row] @ qv[qi]) >= -1e-6).all()
    r.rerank_depth = 12
    sqv = r.support_vectors("question")
    qq = bow.embed_texts([q.question for q in queries])
    si_top12 = [set(row) for row in r.retrieve("SI", queries, 12)]
    for qi, row in enumerate(r.retrieve("SI->Q", queries, 5)):
        assert set(row) <= si_top12[qi]  # second stage only reorders the first stage's top-12
        assert (np.diff(sqv[row] @ qq[qi]) >= -1e-6).all()  # by question similarity, most similar last


def test_mixed_interleaves_si_and_sq_most_similar_last(support: list[VQAItem]) -> None:
    r = Retriever(support, text_embedder=BagOfWords(), image_embedder=PixelImageEmbedder())  # type: ignore[arg-type]
    # queries from outside the support set, so that SQ alone and mixed's SQ half exclude the same items
    queries, k = [replace(q, question_id=q.question_id + 50_000, split="val") for q in support[:8]], 6
    si, sq, mixed = (r.retrieve(s, queries, k) for s in ("SI", "SQ", "mixed"))
    for a, b, m in zip(si, sq, mixed, strict=True):
        assert m == _interleave(a[::-1], b[::-1], k)[::-1]
        assert m[-1] == a[-1]  # the best image match is last (closest to the query) ...
        if b[-1] != a[-1]:
            assert m[-2] == b[-1]  # ... preceded by the best question match
        assert len(set(m)) == k


def test_interleave_drops_duplicates() -> None:
    assert _interleave([1, 2, 3], [1, 4, 2], 3) == [1, 2, 4]
    assert _interleave([1, 2, 3], [1, 4, 2], 5) == [1, 2, 4, 3]


def test_zero_shot_has_no_demos(support: list[VQAItem]) -> None:
    assert Retriever(support).retrieve("zero-shot", support[:3], 4) == [[], [], []]


def test_errors_come_before_any_work(support: list[VQAItem]) -> None:
    r = Retriever(support, text_embedder=BagOfWords(), image_embedder=FailingImageEmbedder())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown retrieval strategy 'SX'.*SI->Q"):
        r.retrieve("SX", support[:2], 2)
    with pytest.raises(ValueError, match=r"SI: k=37 is larger than the support set \(36 items\)"):
        r.retrieve("SI", support[:2], 37)
    with pytest.raises(ValueError, match="k must be >= 0"):
        r.retrieve("SI", support[:2], -1)
    with pytest.raises(ValueError, match=r"I->SQ is cross-modal.*shared image-text space.*'must-not-run'"):
        r.retrieve("I->SQ", support[:2], 2)
    with pytest.raises(ValueError, match=r"SQA-pseudo needs an earlier prediction.*\[1001\]"):
        r.retrieve("SQA-pseudo", support[:2], 2, predictions={1000: "x"})
    with pytest.raises(ValueError, match="needs an image embedder"):
        Retriever(support, text_embedder=BagOfWords()).retrieve("mixed", support[:1], 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a text embedder"):
        Retriever(support, image_embedder=PixelImageEmbedder()).retrieve("SQ->I", support[:1], 2)


def test_ivf_support_index_gives_the_same_top_demos(support: list[VQAItem]) -> None:
    pool = support * 1  # small: ivf with calibrated nprobe must still honour exclusion and order
    flat = Retriever(pool, text_embedder=BagOfWords()).retrieve("SQ", pool[:5], 3)  # type: ignore[arg-type]
    ivf = Retriever(pool, text_embedder=BagOfWords(), index_kind="ivf")  # type: ignore[arg-type]
    rows = ivf.retrieve("SQ", pool[:5], 3)
    for q, row, ref in zip(pool[:5], rows, flat, strict=True):
        assert len(row) == 3 and pool[row[0]].question_id != q.question_id
        assert row[-1] == ref[-1] or pool[row[-1]].question == pool[ref[-1]].question


def tiny_clip() -> ClipEmbedder:
    """A randomly initialised tiny CLIP (no weights can be downloaded): checks shapes and wiring only."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from lmmops.models import build_tokenizer

    tok = build_tokenizer(["<|startoftext|>", "<|endoftext|>"], bos_token="<|startoftext|>",
                          eos_token="<|endoftext|>", pad_token="<|endoftext|>", add_bos=True,
                          corpus=[" ".join(QUESTIONS + ANSWERS)] * 3, vocab_size=300)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return ClipEmbedder(model, tok, processor)


def test_clip_embedder_serves_the_cross_modal_strategies(support: list[VQAItem]) -> None:
    clip = tiny_clip()
    assert clip.shared_space and clip.name.startswith("clip:")
    img, txt = clip.embed_images([support[0].image_path]), clip.embed_texts([support[0].question, "red"])
    assert img.shape == (1, 16) and txt.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(np.vstack([img, txt]), axis=1), 1.0, atol=1e-5)
    r = Retriever(support, image_embedder=clip)
    queries = support[:4]
    for strategy, space_q, space_s in (("I->SQ", "image", "joint_qa"), ("Q->SI", "joint_question", "image")):
        rows = r.retrieve(strategy, queries, 3)
        qv = r._embed(space_q, queries, [q.multiple_choice_answer for q in queries])
        sv = r.support_vectors(space_s)
        for qi, row in enumerate(rows):
            scores = sv[row] @ qv[qi]
            assert (np.diff(scores) >= -1e-6).all()
            allowed = [i for i, s in enumerate(support) if s.image_id != queries[qi].image_id]
            assert scores[-1] == pytest.approx(max(sv[allowed] @ qv[qi]), abs=1e-5)


def test_saved_support_index_is_reused_and_checked(support: list[VQAItem], tmp_path: Path) -> None:
    from lmmops.icl.index import StaleIndexError, VectorIndex

    built = Retriever(support, image_embedder=PixelImageEmbedder(), data_version="md5:1")
    rows = built.retrieve("SI", support[:4], 3)
    built.index("image").save(tmp_path / "image")
    loaded = VectorIndex.load(tmp_path / "image", embedder_name=built.index_name("image"), data_version="md5:1")
    assert loaded.manifest.embedder == "pixels-v1:image"
    reused = Retriever(support, image_embedder=PixelImageEmbedder(), indexes={"image": loaded})
    assert reused.retrieve("SI", support[:4], 3) == rows
    with pytest.raises(StaleIndexError, match="expected 'must-not-run:image', found 'pixels-v1:image'"):
        Retriever(support, image_embedder=FailingImageEmbedder(), indexes={"image": loaded})
