"""The tutorial's transcripts, reproduced to the character by linreg.tutorial.stages."""

from linreg.tutorial import stages as reference
from tests.helpers import ROOT

STAGE1 = """Prediction before training: f(5) = 0.000
epoch 1: w = 3.000, loss = 30.00000000
epoch 2: w = 1.500, loss = 7.50000000
epoch 3: w = 2.250, loss = 1.87500000
epoch 4: w = 1.875, loss = 0.46875000
epoch 5: w = 2.062, loss = 0.11718750
epoch 6: w = 1.969, loss = 0.02929688
epoch 7: w = 2.016, loss = 0.00732422
epoch 8: w = 1.992, loss = 0.00183105
epoch 9: w = 2.004, loss = 0.00045776
epoch 10: w = 1.998, loss = 0.00011444
epoch 11: w = 2.001, loss = 0.00002861
epoch 12: w = 2.000, loss = 0.00000715
epoch 13: w = 2.000, loss = 0.00000179
epoch 14: w = 2.000, loss = 0.00000045
epoch 15: w = 2.000, loss = 0.00000011
epoch 16: w = 2.000, loss = 0.00000003
epoch 17: w = 2.000, loss = 0.00000001
epoch 18: w = 2.000, loss = 0.00000000
epoch 19: w = 2.000, loss = 0.00000000
epoch 20: w = 2.000, loss = 0.00000000
Prediction after training: f(5) = 10.000""".splitlines()

STAGE2 = """Prediction before training: f(5) = 0.000
epoch 1: w = 0.300, loss = 30.00000000
epoch 11: w = 1.665, loss = 1.16278565
epoch 21: w = 1.934, loss = 0.04506890
epoch 31: w = 1.987, loss = 0.00174685
epoch 41: w = 1.997, loss = 0.00006770
epoch 51: w = 1.999, loss = 0.00000262
epoch 61: w = 2.000, loss = 0.00000010
epoch 71: w = 2.000, loss = 0.00000000
epoch 81: w = 2.000, loss = 0.00000000
epoch 91: w = 2.000, loss = 0.00000000
Prediction after training: f(5) = 10.000""".splitlines()


def test_stage1_transcript_matches_tutorial() -> None:
    assert reference.stage1_manual_gradient().transcript() == STAGE1


def test_stage2_transcript_matches_tutorial() -> None:
    assert reference.stage2_loss_and_optimizer().transcript() == STAGE2


def test_stages_3_and_4_are_seeded_and_agree() -> None:
    """Same seed, same initial nn.Linear: the custom module trains exactly like nn.Linear."""
    s3, s4 = reference.stage3_nn_linear(seed=3), reference.stage4_custom_module(seed=3)
    assert s3.losses == reference.stage3_nn_linear(seed=3).losses
    assert s4.transcript() == s3.transcript()
    assert s4.losses == s3.losses and s4.weights == s3.weights
    assert reference.stage4_custom_module(seed=4).losses != s4.losses
    # It learns: the loss falls by two orders of magnitude and f(5) heads for 10.
    assert s4.losses[-1] < s4.losses[0] / 100 and abs(s4.after - 10) < 1.0


def test_tutorial_script_prints_four_stages(capsys) -> None:
    import runpy

    runpy.run_path(str(ROOT / "scripts" / "tutorial.py"), run_name="__main__")
    out = capsys.readouterr().out
    for line in STAGE1 + STAGE2:
        assert line in out
    assert out.count("Prediction after training") == 4
