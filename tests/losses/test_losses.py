"""MuSES losses on tiny hand-made tensors, cross-checked against sentence-transformers where we wrote our own form."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import (
    ContrastiveLoss,
    CoSENTLoss,
    CosineSimilarityLoss,
    DistillKLDivLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
    TripletDistanceMetric,
    TripletLoss,
)
from sentence_transformers.util import pairwise_cos_sim
from torch import Tensor, nn

from muses.heads import matryoshka
from muses.losses import (
    Contrastive,
    CoSENT,
    CosineSimilarity,
    CurriculumMatryoshkaLoss,
    DimSchedule,
    HierarchicalInfoNCE,
    InContextSentenceRanking,
    MatryoshkaAll,
    MaxSimDocumentRanking,
    MultipleNegativesRanking,
    RetentionLoss,
    Triplet,
    in_batch_kl,
    info_nce,
    matryoshka_consistency,
)

DIMS = [32, 64, 128, 256, 384]


class FakeST(nn.Module):
    """Stands in for a SentenceTransformer: its 'features' already are the embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"sentence_embedding": features["x"]}

    def get_embedding_dimension(self) -> int:
        return self.dim


def st_call(loss: nn.Module, columns: list[Tensor], labels: Tensor) -> Tensor:
    """Call a sentence-transformers loss through its model-level forward, on a FakeST."""
    return loss([{"x": c} for c in columns], labels)


def eye(n: int, d: int) -> Tensor:
    return torch.eye(d)[:n]


def seeded(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- hierarchical InfoNCE
def hierarchy_batch() -> dict[str, Tensor]:
    """2 documents (e0, e1), 4 sentences (doc + own axis e2..e5), 8 tokens (2 per sentence, on the sentence's axis).

    Every token's best candidate is its sentence (cos 1/sqrt(2)) and every other sentence scores 0; every sentence's
    best candidate is its document (cos 1/sqrt(2)), the other document 0.
    """
    e = torch.eye(16)
    document = e[:2].clone()
    sentence_doc = torch.tensor([0, 0, 1, 1])
    sentence = torch.stack([e[int(sentence_doc[i])] + e[2 + i] for i in range(4)]) * 3.0  # un-normalised on purpose
    token_sentence = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    token = torch.stack([e[2 + int(s)] * (1 + k) for k, s in enumerate(token_sentence)])
    return {
        "token": token,
        "token_sentence": token_sentence,
        "sentence": sentence,
        "sentence_doc": sentence_doc,
        "document": document,
    }


def test_infonce_perfect_alignment_is_near_zero_and_shuffling_raises_it() -> None:
    loss = HierarchicalInfoNCE(temperature=0.05)
    b = hierarchy_batch()
    out = loss(**b)
    assert out["token_sentence"] < 1e-4 and out["sentence_document"] < 1e-4 and out["loss"] < 1e-4
    shuffled = dict(b, token_sentence=b["token_sentence"][[2, 3, 4, 5, 6, 7, 0, 1]])
    assert loss(**shuffled)["token_sentence"] > 5.0
    shuffled = dict(b, sentence_doc=torch.tensor([1, 1, 0, 0]))
    assert loss(**shuffled)["sentence_document"] > 5.0


def test_infonce_alpha_weighting() -> None:
    b = {k: v.float() + (0.3 * seeded(*v.shape) if v.is_floating_point() else 0) for k, v in hierarchy_batch().items()}
    b = {k: (v if k not in ("token_sentence", "sentence_doc") else v.long()) for k, v in b.items()}
    out = HierarchicalInfoNCE(alpha=0.3)(**b)
    assert torch.allclose(out["loss"], 0.3 * out["token_sentence"] + 0.7 * out["sentence_document"])
    assert torch.allclose(HierarchicalInfoNCE(alpha=1.0)(**b)["loss"], out["token_sentence"])
    assert torch.allclose(HierarchicalInfoNCE(alpha=0.0)(**b)["loss"], out["sentence_document"])


def test_infonce_ignores_tokens_marked_minus_one() -> None:
    loss = HierarchicalInfoNCE()
    b = hierarchy_batch()
    noisy = dict(
        b,
        token=torch.cat([b["token"], seeded(3, 16)]),
        token_sentence=torch.cat([b["token_sentence"], torch.tensor([-1, -1, -1])]),
    )
    assert torch.allclose(loss(**noisy)["token_sentence"], loss(**b)["token_sentence"])
    token = seeded(3, 16).requires_grad_()
    none = loss(**dict(b, token=token, token_sentence=torch.full((3,), -1)))
    assert none["token_sentence"] == 0.0
    none["loss"].backward()  # still part of the graph
    assert token.grad is not None and torch.all(token.grad == 0)


def test_infonce_extra_negatives_raise_the_loss() -> None:
    loss = HierarchicalInfoNCE()
    b = dict(hierarchy_batch(), sentence=seeded(4, 16), document=seeded(2, 16, seed=1))
    base = loss(**b)["sentence_document"]
    assert loss(**b, extra_negative_documents=seeded(3, 16, seed=2))["sentence_document"] > base
    # a hard negative (the positive document itself, slightly perturbed) raises it by about log 2 or more
    hard = b["document"] + 0.01 * seeded(2, 16, seed=3)
    assert loss(**b, extra_negative_documents=hard)["sentence_document"] > base + 0.5


def test_infonce_same_document_sentence_negatives_can_be_masked() -> None:
    b = hierarchy_batch()
    # tokens halfway between their sentence and its sibling: same-document sentences are hard negatives
    sib = torch.tensor([1, 1, 0, 0, 3, 3, 2, 2])
    token = b["sentence"][b["token_sentence"]] + 0.9 * b["sentence"][sib]
    loss = HierarchicalInfoNCE()
    with_siblings = loss(**dict(b, token=token))["token_sentence"]
    without = loss(**dict(b, token=token), same_doc_sentence_negatives=False)["token_sentence"]
    assert with_siblings > 0.1 and without < 1e-4


def test_infonce_equals_sentence_transformers_mnrl_in_the_one_to_one_case() -> None:
    tau = 0.05
    fake = FakeST(16)
    mnrl = MultipleNegativesRankingLoss(fake, scale=1 / tau)  # type: ignore[arg-type]
    tok, sen, doc, neg = (seeded(5, 16, seed=s) for s in range(4))
    ids = torch.arange(5)
    out = HierarchicalInfoNCE(temperature=tau)(tok, ids, sen, ids, doc, extra_negative_documents=neg)
    empty = torch.zeros(0)
    assert torch.allclose(out["token_sentence"], st_call(mnrl, [tok, sen], empty), atol=1e-5)
    assert torch.allclose(out["sentence_document"], st_call(mnrl, [sen, doc, neg], empty), atol=1e-5)


# ---------------------------------------------------------------------------------------------- dim schedules
def test_curriculum_probabilities() -> None:
    sched = DimSchedule(DIMS, "curriculum")
    for p in np.linspace(0, 1, 11):
        assert math.isclose(sched.probabilities(p).sum(), 1.0)
    p0, half, p1 = sched.probabilities(0.0), sched.probabilities(0.5), sched.probabilities(1.0)
    assert np.all(np.diff(p0) < 0) and p0[0] > 0.4  # favours small dims
    assert np.allclose(half, 0.2)
    assert np.all(np.diff(p1) > 0) and np.allclose(p1, p0[::-1])
    assert math.isclose(p1[-1] / p1[0], math.exp(1 / sched.temperature))


def test_other_schedules() -> None:
    assert np.allclose(DimSchedule(DIMS, "uniform").probabilities(0.3), 0.2)
    assert DimSchedule(DIMS, "full").sample(0.1) == 384
    for kind in ("ladder", "starbucks"):
        sched = DimSchedule(DIMS, kind)
        visited = [sched.sample(p) for p in np.linspace(0, 1, 101)]
        assert visited == sorted(visited)
        assert list(dict.fromkeys(visited)) == DIMS  # each dim in turn, small to large
        assert visited.count(32) == 20  # equal stages
    with pytest.raises(ValueError):
        DimSchedule(DIMS, "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DimSchedule([64, 32])


def test_seeded_sampling_is_deterministic() -> None:
    sched = DimSchedule(DIMS, "curriculum")

    def draws(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return [sched.sample(p, g) for p in np.linspace(0, 1, 200)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    first = draws(0)
    assert np.mean(first[:50]) < np.mean(first[-50:])  # small dims early, large late


# ---------------------------------------------------------------------------------------------- consistency
@pytest.mark.parametrize("kind", ["similarity", "kl", "pointwise"])
def test_consistency_is_zero_iff_the_prefix_carries_the_whole_vector(kind: Any) -> None:
    weights = {4: 1.0, 8: 0.5, 16: 0.0}
    x = seeded(6, 16)
    carried = x.clone()
    carried[:, 4:] = 0.0  # every prefix of >= 4 dims is the whole vector
    assert matryoshka_consistency([carried], weights, kind) == pytest.approx(0.0, abs=1e-6)
    assert matryoshka_consistency([x], weights, kind) > 1e-3


@pytest.mark.parametrize("kind", ["similarity", "kl"])
def test_consistency_has_no_gradient_into_the_full_vector(kind: Any) -> None:
    x = seeded(6, 16).requires_grad_()
    matryoshka_consistency([x], {4: 1.0}, kind).backward()
    assert x.grad is not None
    assert torch.all(x.grad[:, 4:] == 0)  # the tail only enters through stopgrad(z_full)
    assert x.grad[:, :4].abs().sum() > 1e-4  # the prefix is trained


def test_pointwise_consistency_has_zero_gradient_for_prefixes_of_one_vector() -> None:
    """Why ``similarity`` is the default: 1 - cos(pad(z_d), sg(z_full)) = 1 - |x[:d]|/|x| cannot be trained."""
    x = seeded(6, 16).requires_grad_()
    value = matryoshka_consistency([x], {4: 1.0}, "pointwise")
    expected = (1 - x[:, :4].norm(dim=-1) / x.norm(dim=-1)).mean()
    assert torch.allclose(value, expected)
    value.backward()
    assert x.grad is not None and x.grad.abs().max() < 1e-6


def test_curriculum_matryoshka_loss() -> None:
    dims = [4, 8, 16]
    a, b = seeded(6, 16, seed=1), seeded(6, 16, seed=2)
    a.requires_grad_()
    scores = torch.arange(6.0)
    cosent = CoSENT()
    mat = CurriculumMatryoshkaLoss(dims, DimSchedule(dims, "curriculum"), consistency_weights=0.1)

    def task(d: int) -> Tensor:
        return cosent(matryoshka(a, d), matryoshka(b, d), scores)

    out = mat(task, [a, b], 0.0, torch.Generator().manual_seed(0))
    again = mat(task, [a, b], 0.0, torch.Generator().manual_seed(0))
    assert out["dim"] in dims and out["dim"] == again["dim"]
    assert torch.allclose(out["task"], task(out["dim"]))
    assert torch.allclose(out["loss"], out["task"] + out["consistency"])
    want = 0.1 * (matryoshka_consistency([a, b], {4: 1.0}) + matryoshka_consistency([a, b], {8: 1.0}))
    assert torch.allclose(out["consistency"], want)
    out["loss"].backward()
    assert a.grad is not None
    with pytest.raises(ValueError):
        CurriculumMatryoshkaLoss([4, 16], DimSchedule(dims))


def test_matryoshka_all_equals_sentence_transformers_matryoshka_loss() -> None:
    dims, weights = [4, 8, 16], [1.0, 0.5, 2.0]
    a, b = seeded(6, 16, seed=1), seeded(6, 16, seed=2)
    scores = torch.tensor([0.1, 0.9, 0.4, 0.3, 0.8, 0.0])
    cosent = CoSENT()
    ours = MatryoshkaAll(dims, weights)(lambda d: cosent(matryoshka(a, d), matryoshka(b, d), scores))
    fake = FakeST(16)
    st = MatryoshkaLoss(fake, CoSENTLoss(fake), dims, weights)  # type: ignore[arg-type]
    assert torch.allclose(ours["loss"], st_call(st, [a, b], scores), atol=1e-5)
    assert set(ours) == {"loss", "task", "consistency", "task@4", "task@8", "task@16"}
    assert ours["consistency"] == 0.0
    some = MatryoshkaAll(dims, n_dims_per_step=2)(lambda d: torch.tensor(float(d)), generator=torch.Generator())
    assert len([k for k in some if k.startswith("task@")]) == 2


# ---------------------------------------------------------------------------------------------- retention
@pytest.mark.parametrize("kind", ["cosine", "mse", "kl"])
def test_retention_is_zero_for_the_teacher_and_positive_otherwise(kind: Any) -> None:
    loss = RetentionLoss(kind)
    teacher = seeded(5, 8)
    assert loss(teacher.clone(), teacher) == pytest.approx(0.0, abs=1e-6)
    student = (teacher + 0.5 * seeded(5, 8, seed=1)).requires_grad_()
    teacher = teacher.clone().requires_grad_()
    value = loss(student, teacher)
    assert value > 1e-3
    value.backward()
    assert teacher.grad is None and student.grad is not None


def test_retention_mse_and_cosine_formulas() -> None:
    s, t = seeded(5, 8), seeded(5, 8, seed=1)
    cos = F.cosine_similarity(s, t)
    assert torch.allclose(RetentionLoss("cosine")(s, t), (1 - cos).mean())
    assert torch.allclose(RetentionLoss("mse")(s, t), ((2 - 2 * cos) / 8).mean())


def test_in_batch_kl_equals_sentence_transformers_distill_kl_div() -> None:
    """DistillKLDivLoss scores a query against its own candidate columns: feed it the batch rolled by 1..B-1."""
    tau, b = 0.05, 5
    s, t = seeded(b, 8), seeded(b, 8, seed=1)
    fake = FakeST(8)
    st = DistillKLDivLoss(fake, similarity_fct=pairwise_cos_sim, temperature=tau)  # type: ignore[arg-type]
    columns = [s] + [torch.roll(s, -k, dims=0) for k in range(1, b)]
    teacher_scores = torch.stack([pairwise_cos_sim(t, torch.roll(t, -k, dims=0)) for k in range(1, b)], dim=1)
    expected = st_call(st, columns, teacher_scores) / tau**2  # ST multiplies by temperature ** 2
    assert torch.allclose(in_batch_kl(s, t, tau), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- pair losses
def test_pair_losses_minimum_at_perfect_alignment_and_shuffling_raises_it() -> None:
    e = eye(4, 8)
    shuffle = torch.tensor([1, 2, 3, 0])
    scores = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    # pairs whose cosine equals their score: b_i = score_i * e_i + sqrt(1 - score_i^2) * e_{i+4}
    b = scores[:, None] * e + (1 - scores[:, None] ** 2).sqrt() * torch.eye(8)[4:]
    cosent = CoSENT()
    assert cosent(e, b, scores) < cosent(e, b, scores[shuffle])
    # ordering perfect: only the terms exp(20 * (cos_lower - cos_higher)) are left, gaps of 1/3, 2/3 and 1
    gaps = [1 / 3] * 3 + [2 / 3] * 2 + [1.0]
    expected = math.log(1 + sum(math.exp(-20 * g) for g in gaps))
    assert cosent(e, b, scores).item() == pytest.approx(expected, rel=1e-4)
    cs = CosineSimilarity()
    assert cs(e, b, scores) == pytest.approx(0.0, abs=1e-6) and cs(e, b, scores[shuffle]) > 0.1
    mnrl = MultipleNegativesRanking()
    assert mnrl(e, e) < 1e-6 and mnrl(e, e[shuffle]) > 5.0
    assert mnrl(e, e, [e[shuffle]]) > mnrl(e, e)  # hard negatives only add terms
    labels = torch.tensor([1, 0, 1, 0])
    partner = torch.where(labels[:, None].bool(), e, e[shuffle])  # similar pairs identical, others orthogonal
    con = Contrastive(margin=0.5)
    assert con(e, partner, labels) == 0.0 and con(e, partner, 1 - labels) > 0.1
    tri = Triplet(margin=0.2, distance="cosine")
    assert tri(e, e, e[shuffle]) == 0.0 and tri(e, e[shuffle], e) > 0.5


def test_pair_losses_match_sentence_transformers_model_level_forward() -> None:
    a, b, c = seeded(6, 8), seeded(6, 8, seed=1), seeded(6, 8, seed=2)
    scores, labels = torch.rand(6, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 0, 1, 1, 0, 0])
    fake: Any = FakeST(8)
    empty = torch.zeros(0)
    cases = [
        (CoSENT(scale=10.0)(a, b, scores), st_call(CoSENTLoss(fake, scale=10.0), [a, b], scores)),
        (MultipleNegativesRanking()(a, b, [c]), st_call(MultipleNegativesRankingLoss(fake), [a, b, c], empty)),
        (Contrastive()(a, b, labels), st_call(ContrastiveLoss(fake), [a, b], labels)),
        (
            Triplet(0.3, "cosine")(a, b, c),
            st_call(TripletLoss(fake, TripletDistanceMetric.COSINE, triplet_margin=0.3), [a, b, c], empty),
        ),
        (Triplet()(a, b, c), st_call(TripletLoss(fake), [a, b, c], empty)),
        (CosineSimilarity()(a, b, scores), st_call(CosineSimilarityLoss(fake), [a, b], scores)),
    ]
    for ours, theirs in cases:
        assert torch.allclose(ours, theirs)
    with pytest.raises(ValueError):
        Contrastive(distance="dot")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- in-context sentences
def test_maxsim_document_ranking_scores_each_document_by_its_best_sentence() -> None:
    """Documents scored by their best sentence, by hand; only those best sentences get a gradient."""
    q, s = seeded(3, 8), seeded(7, 8, seed=2).requires_grad_(True)
    owner, target = torch.tensor([0, 0, 0, 1, 1, 2, 2]), torch.tensor([0, 2, 1])
    loss = MaxSimDocumentRanking(scale=20.0)(q, s, owner, target)
    cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(s, dim=-1).T * 20.0
    per_doc = torch.stack([cos[:, :3].max(1).values, cos[:, 3:5].max(1).values, cos[:, 5:].max(1).values], dim=1)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(per_doc, target), atol=1e-5)
    loss.backward()
    assert s.grad is not None
    best = {int(j) for lo, hi in ((0, 3), (3, 5), (5, 7)) for j in cos[:, lo:hi].argmax(1) + lo}
    assert {j for j in range(7) if s.grad[j].abs().sum() > 0} == best
    with pytest.raises(ValueError, match="owner must be"):
        MaxSimDocumentRanking()(q, s.detach(), owner[:3], target)


def test_sentence_ranking_equals_infonce_with_one_positive_and_sums_several() -> None:
    q, s = seeded(3, 8), seeded(7, 8, seed=1)
    target = torch.tensor([0, 4, 6])
    one = torch.nn.functional.one_hot(target, 7).bool()
    ranking = InContextSentenceRanking(scale=20.0)
    assert torch.allclose(ranking(q, s, one), info_nce(q, s, target, temperature=0.05), atol=1e-6)
    # two positives: -log(p_a + p_b) of the softmax over all candidates, by hand
    two = one.clone()
    two[0, 1] = True
    logits = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(s, dim=-1).T * 20.0
    p = logits.softmax(dim=1)
    by_hand = torch.stack([-(p[0, 0] + p[0, 1]).log(), -p[1, 4].log(), -p[2, 6].log()]).mean()
    assert torch.allclose(ranking(q, s, two), by_hand, atol=1e-5)
    assert ranking(q, s, two) < ranking(q, s, one)  # a second gold sentence is never pushed away
    # candidates: only sentences 0-3 for every query (positives always stay)
    cand = torch.zeros(3, 7, dtype=torch.bool)
    cand[:, :4] = True
    masked = logits.masked_fill(~(cand | one), float("-inf")).softmax(dim=1)
    expected = torch.stack([-masked[i, int(t)].log() for i, t in enumerate(target)]).mean()
    assert torch.allclose(ranking(q, s, one, cand), expected, atol=1e-5)
    with pytest.raises(ValueError, match="at least one positive"):
        ranking(q, s, torch.zeros(3, 7, dtype=torch.bool))
