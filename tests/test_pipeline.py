import numpy as np
import pytest

from ssd_jax.data import iterator_state, pipeline
from ssd_jax.data.synthetic import SyntheticShapes

SOURCE = SyntheticShapes(24, num_classes=3, image_size=(60, 80), seed=0)


def collect(iterator, count):
    return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(count)]


def test_pad_objects_keeps_the_largest_and_counts_the_rest():
    boxes = np.array(
        [[0, 0, 0.1, 0.1], [0, 0, 0.5, 0.5], [0, 0, 0.2, 0.2], [0, 0, 0.3, 0.3]], np.float32
    )
    labels = np.array([1, 2, 3, 4], np.int32)
    out = pipeline.pad_objects(boxes, labels, 2, difficult=np.array([0, 1, 0, 1], bool))
    np.testing.assert_array_equal(out["labels"], [2, 4])  # two largest, original order
    np.testing.assert_array_equal(out["difficult"], [True, True])
    assert out["num_truncated"] == 2 and out["mask"].all()
    out = pipeline.pad_objects(boxes[:1], labels[:1], 3)
    np.testing.assert_array_equal(out["mask"], [True, False, False])
    np.testing.assert_array_equal(out["boxes"][1:], 0)
    assert out["num_truncated"] == 0


def test_train_batches_have_fixed_shapes():
    dataset = pipeline.train_dataset(SOURCE, image_size=48, batch_size=4, seed=0, max_boxes=5)
    batch = collect(pipeline.make_iterator(dataset), 1)[0]
    assert batch["image"].shape == (4, 48, 48, 3) and batch["image"].dtype == np.uint8
    assert batch["boxes"].shape == (4, 5, 4) and batch["boxes"].dtype == np.float32
    assert batch["labels"].shape == batch["mask"].shape == (4, 5)
    assert batch["image_id"].shape == batch["num_truncated"].shape == (4,)
    assert (batch["labels"][~batch["mask"]] == 0).all() and (
        batch["labels"][batch["mask"]] > 0
    ).all()


def test_every_epoch_is_a_new_permutation():
    dataset = pipeline.train_dataset(SOURCE, image_size=32, batch_size=6, seed=3)
    batches = collect(pipeline.make_iterator(dataset), 8)  # two epochs of 4 batches
    epochs = [np.concatenate([b["image_id"] for b in batches[e * 4 : e * 4 + 4]]) for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(24))
    assert list(epochs[0]) != list(epochs[1])


def test_same_seed_same_batches_and_resume_from_state():
    dataset = pipeline.train_dataset(SOURCE, image_size=32, batch_size=4, seed=1)
    uninterrupted = collect(pipeline.make_iterator(dataset), 5)
    iterator = pipeline.make_iterator(dataset)
    collect(iterator, 2)
    state = iterator.get_state()
    resumed = pipeline.make_iterator(
        pipeline.train_dataset(SOURCE, image_size=32, batch_size=4, seed=1)
    )
    resumed.set_state(state)
    for want, got in zip(uninterrupted[2:], collect(resumed, 3)):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other = collect(
        pipeline.make_iterator(pipeline.train_dataset(SOURCE, image_size=32, batch_size=4, seed=2)),
        1,
    )
    assert not np.array_equal(other[0]["image"], uninterrupted[0]["image"])


@pytest.mark.parametrize(
    "workers_before, workers_after, consumed",
    [(2, 0, 3), (0, 3, 1), (3, 2, 4)],
)
def test_resume_with_worker_processes_continues_where_the_batches_were_consumed(
    workers_before, workers_after, consumed
):
    """The state of an iterator whose workers have prepared batches ahead counts
    only the batches handed out, and a resume may change the number of workers
    (Grain's two state formats: :mod:`ssd_jax.data.iterator_state`)."""
    dataset = pipeline.train_dataset(SOURCE, image_size=32, batch_size=4, seed=1)
    uninterrupted = collect(pipeline.make_iterator(dataset), consumed + 2)
    iterator = pipeline.make_iterator(dataset, num_workers=workers_before)
    collect(iterator, consumed)
    state = iterator.get_state()
    iterator.close()
    assert state == iterator_state.state_after(consumed, workers_before)  # Grain's format
    resumed = pipeline.make_iterator(dataset, num_workers=workers_after)
    resumed.set_state(state)
    for want, got in zip(uninterrupted[consumed:], collect(resumed, 2), strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    resumed.close()


def test_an_unknown_iterator_state_is_named():
    with pytest.raises(iterator_state.IteratorStateError, match="unknown data-iterator state"):
        iterator_state.batches_handed_out({"position": 3})
    state = iterator_state.state_after(5, 2)  # two workers, five batches
    assert iterator_state.batches_handed_out(state) == 5
    del state["future_states"]  # an interleave state of another Grain
    with pytest.raises(iterator_state.IteratorStateError) as error:
        iterator_state.batches_handed_out(state)
    assert str(error.value) == (
        "unknown data-iterator state (keys ['exhausted', 'iterators_in_use_indices', "
        "'iterators_in_use_states', 'next_index_in_cycle', 'next_index_in_datasets'])"
    )
    uneven = "a data-iterator state of a finished or uneven interleave"
    for change in ({"future_states": {"0": {"next_index": 3}}}, {"exhausted": [0, 1]}):
        with pytest.raises(iterator_state.IteratorStateError, match=uneven):
            iterator_state.batches_handed_out(iterator_state.state_after(5, 2) | change)


def test_worker_processes_give_the_same_batches():
    dataset = pipeline.train_dataset(SOURCE, image_size=32, batch_size=4, seed=1)
    in_process = collect(pipeline.make_iterator(dataset), 3)
    with_workers = collect(pipeline.make_iterator(dataset, num_workers=2), 3)
    for want, got in zip(in_process, with_workers):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_process_shards_are_disjoint():
    ids = []
    for shard in range(2):
        dataset = pipeline.train_dataset(
            SOURCE, image_size=32, batch_size=4, seed=0, shard_index=shard, shard_count=2
        )
        ids.append(
            set(
                np.concatenate([b["image_id"] for b in collect(pipeline.make_iterator(dataset), 3)])
            )
        )
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(range(24))


def test_eval_batches_cover_every_image_once_across_shards():
    source = SyntheticShapes(11, num_classes=3, image_size=(60, 80), seed=5)
    seen, batch_counts = [], []
    for shard in range(2):
        dataset = pipeline.eval_dataset(
            source, image_size=32, batch_size=4, shard_index=shard, shard_count=2
        )
        batches = list(pipeline.make_iterator(dataset))
        batch_counts.append(len(batches))
        for batch in batches:
            real = ~batch["is_padding"]
            seen += list(batch["image_id"][real])
            assert (batch["image_id"][~real] == -1).all() and not batch["mask"][~real].any()
            for row in np.nonzero(real)[0]:
                example = source[int(batch["image_id"][row])]
                n = len(example["labels"])
                np.testing.assert_array_equal(batch["labels"][row, :n], example["labels"])
                assert (batch["height"][row], batch["width"][row]) == (60, 80)
    assert sorted(seen) == list(range(11)) and batch_counts[0] == batch_counts[1] == 2


def test_eval_batches_keep_difficult_flags():
    example = SyntheticShapes(1, num_classes=3, seed=9, max_objects=4)[0]
    example["difficult"][:] = True
    batch = pipeline.EvalTransform(32, 6).map(example)
    n = len(example["labels"])
    assert batch["difficult"][:n].all() and not batch["difficult"][n:].any()


def test_too_small_dataset_and_bad_shard_are_errors():
    with pytest.raises(ValueError, match="fewer than one batch of 32"):
        pipeline.train_dataset(SOURCE, image_size=32, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="shard_index 2 is not in"):
        pipeline.eval_dataset(SOURCE, image_size=32, batch_size=4, shard_index=2, shard_count=2)
