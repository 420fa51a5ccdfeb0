"""The JEDI objective, checked against a hand computation of the paper's Eq. 1-4."""
import math

import pytest
import torch
import torch.nn.functional as F

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.models.jedi import AdjustmentModule, JEDIModel, teacher_dropout
from jedi_deploy.train.losses import distillation_weights, jedi_loss

# The paper's Table 1: ActivityNet/TSN, HMDB51/TSM, Kinetics400/Swin-B, UCF101/TSM.
PAPER_DIMS, PAPER_CLASSES = [2048, 2048, 1024, 2048], [200, 51, 400, 101]
PAPER_SIZES = [8398, 3570, 226070, 9537]


def test_teacher_dropout_for_the_papers_table1():
    # D = 7168, k = 10: p_i = 1 - 10*C_i/7168, by hand.
    m = JEDIModel(PAPER_DIMS, PAPER_CLASSES, JEDIConfig(hidden=4))
    assert m.teacher_p == pytest.approx([5168 / 7168, 6658 / 7168, 3168 / 7168, 6158 / 7168])
    assert [round(p, 4) for p in m.teacher_p] == [0.721, 0.9289, 0.442, 0.8591]
    assert all(t[1].in_features == 7168 for t in m.teachers)
    assert teacher_dropout(400, 7168, 100) == 0.0  # k*C > D: no dropout
    # Teacher input "predictions" is 752-d (200+51+400+101): p_i = 1 - 10*C_i/752 clipped at 0.
    m = JEDIModel(PAPER_DIMS, PAPER_CLASSES, JEDIConfig(hidden=4, teacher_input="predictions"))
    assert m.teacher_p == [0.0, pytest.approx(1 - 510 / 752), 0.0, 0.0]


def test_distillation_weights_for_the_papers_table1():
    w = distillation_weights(PAPER_SIZES)
    total = 8398 + 3570 + 226070 + 9537  # 247575 (the paper's table prints 251 358)
    want = torch.tensor([[1, 3570 / total, 226070 / total, 9537 / total],
                         [8398 / total, 1, 226070 / total, 9537 / total],
                         [8398 / total, 3570 / total, 1, 9537 / total],
                         [8398 / total, 3570 / total, 226070 / total, 1],
                         [0, 0, 0, 0]])  # pool row: unused when distilling on "all"
    torch.testing.assert_close(w, want)
    assert round(w[0, 2].item(), 4) == 0.9131 and round(w[2, 0].item(), 5) == 0.03392


def test_distillation_weights_per_scenario():
    sizes = [10, 30]
    torch.testing.assert_close(distillation_weights(sizes, JEDIConfig(distill_data="own")),
                               torch.tensor([[1., 0], [0, 1], [0, 0]]))
    torch.testing.assert_close(distillation_weights(sizes, JEDIConfig(distill_data="pool")),
                               torch.tensor([[0., 0], [0, 0], [1, 1]]))
    assert distillation_weights(sizes, JEDIConfig(distill_data="none")).abs().sum() == 0
    given = JEDIConfig(weights=[[1, 0.5], [0.25, 1]])
    torch.testing.assert_close(distillation_weights(sizes, given)[:2], torch.tensor([[1, .5], [.25, 1]]))
    with pytest.raises(ConfigError, match="3 x 3"):
        distillation_weights([1, 2, 3], given)
    with pytest.raises(ConfigError, match="square"):
        JEDIConfig(weights=[[1, 2]])


def test_combined_loss_on_a_tiny_batch_with_known_values():
    # One dataset, two classes, one labeled sample (y = 0) and one unlabeled sample.
    cfg = JEDIConfig()  # alpha = beta = 1, gamma = 0.4, T = 1
    student = [torch.tensor([[0.0, 0.0], [0.0, 0.0]])]
    teacher = [torch.tensor([[0.0, 0.0], [2.0, 0.0]])]
    index, labels = torch.tensor([0, 0]), torch.tensor([0, -1])
    loss, parts = jedi_loss(student, teacher, index, labels, distillation_weights([2]), cfg, distill=True)
    ln2 = math.log(2)
    ce = ln2  # CE([0, 0], 0)
    hinge = 0.5  # max(0, 1 - 0 + 0) / 2 classes
    kd = ln2 + ln2  # student uniform: CE(p, uniform) = ln 2 whatever the target p
    assert parts == pytest.approx({"ce": ce / 2, "teacher": hinge / 2, "kd": kd / 2})
    assert loss.item() == pytest.approx((ce + hinge + 0.4 * kd) / 2)


def test_kd_variants_and_teacher_ce():
    s = [torch.tensor([[3.0, 0.0], [0.0, 0.1]])]
    t = [torch.tensor([[0.0, 4.0], [0.2, 0.0]])]  # confident on sample 0 only (softmax 0.982)
    idx, lab, w = torch.tensor([0, 0]), torch.tensor([-1, -1]), distillation_weights([2])
    _, mse = jedi_loss(s, t, idx, lab, w, JEDIConfig(kd_loss="mse"), distill=True)
    assert mse["kd"] == pytest.approx(((9 + 16) / 2 + (0.04 + 0.01) / 2) / 2)
    _, hard = jedi_loss(s, t, idx, lab, w, JEDIConfig(kd_loss="hard", tau=0.9), distill=True)
    assert hard["kd"] == pytest.approx(F.cross_entropy(s[0][:1], torch.tensor([1])).item() / 2)
    _, both = jedi_loss(s, t, idx, lab, w, JEDIConfig(kd_loss="cmpl", tau=0.9), distill=True)
    # student is confident (0.953) on sample 0 too: the teacher learns class 0 there.
    want = F.cross_entropy(s[0][:1], torch.tensor([1])) + F.cross_entropy(t[0][:1], torch.tensor([0]))
    assert both["kd"] == pytest.approx(want.item() / 2)
    loss, _ = jedi_loss(s, t, idx, lab, w, JEDIConfig(kd_loss="cmpl", lam=5.0, gamma=0.0), distill=True)
    assert loss.item() == pytest.approx(5.0 * both["kd"])  # λ weights the CMPL terms
    _, ce = jedi_loss(s, t, idx, torch.tensor([1, 0]), w, JEDIConfig(teacher_loss="ce"), distill=False)
    assert ce["teacher"] == pytest.approx(F.cross_entropy(t[0], torch.tensor([1, 0]), reduction="sum").item() / 2)


def test_cmpl_teacher_side_gets_gradient_but_soft_kd_does_not():
    t = torch.tensor([[0.0, 4.0]], requires_grad=True)
    s = torch.tensor([[5.0, 0.0]], requires_grad=True)
    args = (torch.tensor([0]), torch.tensor([-1]), distillation_weights([1]))
    jedi_loss([s], [t], *args, JEDIConfig(kd_loss="cmpl"), distill=True)[0].backward()
    assert t.grad.abs().sum() > 0
    t.grad = None
    jedi_loss([s], [t], *args, JEDIConfig(kd_loss="soft"), distill=True)[0].backward()
    assert t.grad is None or t.grad.abs().sum() == 0


def test_alternating_phases_keep_only_their_terms():
    s, t = [torch.randn(3, 4)], [torch.randn(3, 4)]
    args = (torch.tensor([0, 0, 0]), torch.tensor([1, 2, -1]), distillation_weights([3]), JEDIConfig())
    _, teachers = jedi_loss(s, t, *args, distill=True, phase="teachers")
    _, students = jedi_loss(s, t, *args, distill=True, phase="students")
    assert teachers["ce"] == 0 and teachers["kd"] == 0 and teachers["teacher"] > 0
    assert students["teacher"] == 0 and students["ce"] > 0 and students["kd"] > 0


def _hinge(logits, y):  # Weston-Watkins multi-class hinge, averaged over classes (MultiMarginLoss)
    return sum(max(0.0, 1 - logits[y] + logits[j]) for j in range(len(logits)) if j != y) / len(logits)


def _kd(student, teacher, t):
    p = torch.softmax(teacher / t, 0)
    return -(p * torch.log_softmax(student / t, 0)).sum().item()


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    cfg = JEDIConfig(alpha=0.7, beta=1.3, gamma=0.4, temperature=2.0)
    classes = [3, 4]
    student = [torch.randn(5, c) for c in classes]
    teacher = [torch.randn(5, c) for c in classes]
    index = torch.tensor([0, 0, 1, 1, 1])
    labels = torch.tensor([2, -1, 0, 3, -1])
    w = distillation_weights([2, 3])
    loss, parts = jedi_loss(student, teacher, index, labels, w, cfg, distill=True)
    want = 0.0
    for x in range(5):
        i, y = int(index[x]), int(labels[x])
        if y >= 0:
            want += cfg.alpha * F.cross_entropy(student[i][x:x + 1], labels[x:x + 1]).item()
            want += cfg.beta * _hinge(teacher[i][x].tolist(), y)
        want += cfg.gamma * sum(w[i, j].item() * _kd(student[j][x], teacher[j][x], cfg.temperature)
                                for j in range(2))
    assert loss.item() == pytest.approx(want / 5, rel=1e-5)
    assert set(parts) == {"ce", "teacher", "kd"}


def test_unlabeled_samples_get_only_kd_and_burn_in_switches_kd_off():
    cfg = JEDIConfig()
    s, t = [torch.randn(4, 3)], [torch.randn(4, 3)]
    idx, lab = torch.zeros(4, dtype=torch.long), torch.full((4,), -1)
    w = distillation_weights([4])
    loss, parts = jedi_loss(s, t, idx, lab, w, cfg, distill=True)
    assert parts["ce"] == 0 and parts["teacher"] == 0 and loss.item() == pytest.approx(cfg.gamma * parts["kd"])
    loss_off, parts_off = jedi_loss(s, t, idx, torch.tensor([0, 1, 2, 0]), w, cfg, distill=False)
    assert parts_off["kd"] == 0 and loss_off.item() > 0


def test_kd_targets_are_pseudo_labels_without_gradient():
    cfg = JEDIConfig(alpha=0, beta=0, gamma=1)
    model = JEDIModel([6, 5], [3, 2], cfg)
    embs = [torch.randn(8, 6), torch.randn(8, 5)]
    s, t = model(embs)
    loss, _ = jedi_loss(s, t, torch.zeros(8, dtype=torch.long), torch.full((8,), -1),
                        distillation_weights([8, 1]), cfg, distill=True)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.teachers.parameters())
    assert model.students[0].weight.grad.abs().sum() > 0


def test_adjustment_starts_as_identity_and_dropout_only_in_training():
    a = AdjustmentModule(8, 4, 0.75)
    e = torch.randn(5, 8)
    assert torch.equal(a(e), e)
    torch.nn.init.normal_(a.fc2.weight)
    a.eval()
    torch.testing.assert_close(a(e), e + a.fc2(F.silu(a.fc1(e))))
    m = JEDIModel([8, 4], [3, 5], JEDIConfig(k=1))
    assert m.teacher_p == [pytest.approx(1 - 3 / 12), pytest.approx(1 - 5 / 12)]
    assert all(math.isclose(t[0].p, p) for t, p in zip(m.teachers, m.teacher_p))
