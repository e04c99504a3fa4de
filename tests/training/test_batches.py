"""Training batches: every row once an epoch, reshuffled, each part cut by the same rows, float16 kept."""
import numpy as np

from training.batches import batches


def rows_of(dataset):
    return [tuple(np.asarray(x) for x in (inputs[0][:, 0], inputs[1][:, 0], targets[:, 0], weights[:, 0]))
            for inputs, targets, weights in dataset]


def test_each_epoch_gives_every_row_once_in_a_new_order_and_keeps_the_parts_together():
    n = 10
    first = np.arange(n, dtype=np.float16)[:, None]
    second = (100 + np.arange(n, dtype=np.float32))[:, None]
    targets, weights = (200 + np.arange(n))[:, None], (300 + np.arange(n, dtype=np.float32))[:, None]
    dataset = batches([first, second], targets, weights, batch_size=4, shuffle_seed=0)
    epochs = []
    for _ in range(2):
        seen = rows_of(dataset)
        assert [len(b[0]) for b in seen] == [4, 4, 2]
        order = np.concatenate([b[0] for b in seen]).astype(int)
        for a, b, t, w in seen:
            np.testing.assert_array_equal(b, a.astype(np.float32) + 100)  # one row's parts travel together
            np.testing.assert_array_equal(t, a.astype(int) + 200)
            np.testing.assert_array_equal(w, a.astype(np.float32) + 300)
        assert sorted(order) == list(range(n))
        epochs.append(order)
    assert list(epochs[0]) != list(epochs[1])
    inputs, _, _ = next(iter(dataset))
    assert inputs[0].dtype == np.float16  # cast by the model's input, not here


def test_without_a_seed_the_rows_keep_their_order():
    values = np.arange(7, dtype=np.float32)[:, None]
    dataset = batches([values], values, values, batch_size=3)
    assert np.concatenate([np.asarray(x[0][0]) for x in dataset])[:, 0].tolist() == list(range(7))
