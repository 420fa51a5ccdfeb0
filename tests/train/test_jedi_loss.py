"""The JEDI objective, checked against a hand computation of the paper's Eq. 1-4."""
import math

import pytest
import torch
import torch.nn.functional as F

from jedi_deploy.jedi_model import AdjustmentModule, JEDIConfig, JEDIModel, teacher_dropout
from train.jedi import distillation_weights, jedi_loss


def test_teacher_dropout_rule_and_distillation_weights():
    assert teacher_dropout(200, 7168, 10) == pytest.approx(1 - 2000 / 7168)
    assert teacher_dropout(400, 7168, 100) == 0.0
    w = distillation_weights([10, 30, 60])
    assert torch.allclose(w, torch.tensor([[1, .3, .6], [.1, 1, .6], [.1, .3, 1]]))


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
    assert set(parts) == {"ce", "hinge", "kd"}


def test_unlabeled_samples_get_only_kd_and_burn_in_switches_kd_off():
    cfg = JEDIConfig()
    s, t = [torch.randn(4, 3)], [torch.randn(4, 3)]
    idx, lab = torch.zeros(4, dtype=torch.long), torch.full((4,), -1)
    w = distillation_weights([4])
    loss, parts = jedi_loss(s, t, idx, lab, w, cfg, distill=True)
    assert parts["ce"] == 0 and parts["hinge"] == 0 and loss.item() == pytest.approx(cfg.gamma * parts["kd"])
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
