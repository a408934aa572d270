"""Checkpoints write the model in full once per phase, then only what can change; a
checkpoint restores every variable bit for bit; a hook's unchanged arrays are not
written again."""

from __future__ import annotations

import numpy as np

from test_keep_best import QUIET, RUN, splits  # noqa: F401 (fixture)


def test_epochs_write_what_changes_and_restore_exactly(tmp_path, monkeypatch, splits, cnn_file):  # noqa: F811
    import graft
    from graft.training import checkpoints, snapshots

    seen = []
    original = checkpoints.Checkpointer.save

    def save(self, ctx, row, states):
        original(self, ctx, row, states)
        state, folder = self.state, checkpoints.checkpoint_dir(self.run_dir)
        variables = ctx.model.variables
        written = snapshots.load_indexed(folder / state.weights)
        values = [np.array(v) for v in variables]
        for v in variables:  # spoil every variable, then restore the checkpoint
            v.assign(np.zeros(v.shape, v.dtype) + 1)
        checkpoints.restore_model(ctx.model, self.run_dir, state)
        for v, value in zip(variables, values, strict=True):
            np.testing.assert_array_equal(np.asarray(v), value)
        best = state.states["keep_best"]
        seen.append((row["phase_epoch"], len(written), len(variables), best))

    monkeypatch.setattr(checkpoints.Checkpointer, "save", save)
    train, val = splits
    graft.train(train, val=val, backbone=str(cnn_file), out=tmp_path / "run", **QUIET, **RUN)
    assert len(seen) == 5
    for phase_epoch, written, total, best in seen:
        if phase_epoch == 1:
            assert written == total  # the phase's base
        else:
            assert written < total  # frozen layers are not written again
        # keep-best's weights file is the one of its best epoch, not rewritten since
        assert best["arrays"] == f"keep_best-e{best['best']['epoch']:04d}.npz"
    assert any(b["best"]["epoch"] < i + 1 for i, (*_, b) in enumerate(seen))
