import torch

from jedi_deploy.models.tiny import Conv3DEncoder, Segment2DEncoder, TemporalShift


def test_temporal_shift_moves_channel_folds_in_time():
    b, t, c = 2, 4, 8
    x = torch.arange(b * t * c, dtype=torch.float32).view(b * t, c, 1, 1)
    y = TemporalShift(t, fold_div=4)(x).view(b, t, c)
    xv = x.view(b, t, c)
    torch.testing.assert_close(y[:, :-1, 0:2], xv[:, 1:, 0:2])  # first fold: from the next frame
    assert (y[:, -1, 0:2] == 0).all()
    torch.testing.assert_close(y[:, 1:, 2:4], xv[:, :-1, 2:4])  # second fold: from the previous frame
    assert (y[:, 0, 2:4] == 0).all()
    torch.testing.assert_close(y[:, :, 4:], xv[:, :, 4:])


def test_tsn_is_order_blind_and_tsm_and_3d_are_not():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 3, 32, 32)
    rev = x.flip(1)
    for enc, blind in ((Segment2DEncoder(shift=False), True), (Segment2DEncoder(shift=True), False),
                       (Conv3DEncoder(), False)):
        enc.eval()
        with torch.no_grad():
            same = torch.allclose(enc(x), enc(rev), atol=1e-5)
        assert same == blind, type(enc).__name__
