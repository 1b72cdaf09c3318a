"""Training's share and step planning (no Spark, no TensorFlow): which node reads which shards or records,
and the step budgets every node can meet."""
import pytest

from tfospipe import schema, train, trainplan
from tfospipe.runner import JobError, UserError


def shards(*records):
    return [{"file": f"part-{i:05d}.tfrecord", "records": n} for i, n in enumerate(records)]


@pytest.mark.parametrize("records, nodes", [([10, 20], 2), ([5, 5, 5, 100, 1], 2), ([3, 0, 3, 0, 3], 3),
                                            ([7, 7, 7, 7], 4), ([1, 2, 3, 4, 5, 6, 7], 3)])
def test_every_non_empty_shard_goes_to_exactly_one_node_and_none_is_empty(records, nodes):
    shares = trainplan.assign_shards(records, nodes)
    assert len(shares) == nodes and all(shares)
    flat = sorted(i for share in shares for i in share)
    assert flat == [i for i, n in enumerate(records) if n > 0]
    loads = [sum(records[i] for i in share) for share in shares]
    # balanced as whole shards allow: moving the smallest shard of the fullest node would not help
    fullest = max(range(nodes), key=lambda k: loads[k])
    smallest = min(records[i] for i in shares[fullest])
    assert len(shares[fullest]) == 1 or max(loads) - min(loads) <= smallest


def test_assignment_is_deterministic_and_balanced_by_records_not_files():
    assert trainplan.assign_shards([10, 20], 2) == [[1], [0]]
    # one big shard alone on a node, the four small ones together
    assert trainplan.assign_shards([5, 5, 5, 100, 1], 2) == [[3], [0, 1, 2, 4]]


def test_too_few_non_empty_shards_cannot_be_assigned():
    assert trainplan.assign_shards([10, 0], 2) is None
    assert trainplan.assign_shards([0, 0, 9], 2) is None


def test_file_shares_carry_paths_and_record_counts():
    shares = trainplan.plan_shares("train", shards(10, 20, 0), "/d/train", 2)
    assert shares == [{"files": ["/d/train/part-00001.tfrecord"], "offset": 0, "every": 1, "records": 20},
                      {"files": ["/d/train/part-00000.tfrecord"], "offset": 0, "every": 1, "records": 10}]


@pytest.mark.parametrize("records, nodes, expected", [([10, 0], 2, [5, 5]), ([7, 0, 0], 3, [3, 2, 2]),
                                                      ([3, 0, 2], 3, [2, 2, 1])])
def test_fewer_non_empty_shards_than_nodes_share_by_record(records, nodes, expected):
    shares = trainplan.plan_shares("eval", shards(*records), "/d/eval", nodes)
    nonempty = [f"/d/eval/part-{i:05d}.tfrecord" for i, n in enumerate(records) if n > 0]
    assert [s["files"] for s in shares] == [nonempty] * nodes
    assert [(s["offset"], s["every"]) for s in shares] == [(k, nodes) for k in range(nodes)]
    assert [s["records"] for s in shares] == expected and sum(expected) == sum(records)


def test_record_shares_read_every_record_exactly_once(tmp_path):
    """The executors' strided reading (spark feed) gives each node exactly the records the plan counted."""
    files = []
    for i, n in enumerate([7, 0, 4]):
        path = tmp_path / f"part-{i:05d}.tfrecord"
        path.write_bytes(b"".join(schema.tfrecord_frame(f"r{i}-{j}".encode()) for j in range(n)))
        files.append({"file": path.name, "records": n})
    shares = trainplan.plan_shares("train", files, str(tmp_path), 3)
    got = [list(train.strided_payloads(s["files"], s["offset"], s["every"])) for s in shares]
    assert [len(g) for g in got] == [s["records"] for s in shares] == [4, 4, 3]
    assert sorted(r for g in got for r in g) == sorted(f"r{i}-{j}".encode() for i, n in ((0, 7), (2, 4))
                                                       for j in range(n))


def test_a_split_with_fewer_records_than_nodes_is_refused_naming_the_shard_counts():
    with pytest.raises(UserError) as e:  # not retried: the same data fails the same way
        trainplan.plan_shares("train", shards(1, 0, 0), "/d/train", 2)
    msg = str(e.value)
    assert "train shards hold [1, 0, 0] records" in msg and "2 reading nodes" in msg
    assert "Add data" in msg and "cluster_size" in msg


def test_step_budgets_every_node_can_meet():
    # two gzip inputs, train shards [10, 20], eval [10, 0] (record shares 5 / 5), batch 4 on 2 workers
    eval_shares = trainplan.plan_shares("eval", shards(10, 0), "/d", 2)
    assert trainplan.plan_steps(30, eval_shares, 4, 2) == (3, 2)
    # train [10, 0], eval [10, 8]: the larger eval share sets the eval budget; the other node repeats
    eval_shares = trainplan.plan_shares("eval", shards(10, 8), "/d", 2)
    assert trainplan.plan_steps(10, eval_shares, 4, 2) == (1, 3)
    # parameter servers: one batch per step, the eval split once
    assert trainplan.plan_steps(30, eval_shares, 4, 1) == (7, 5)
    assert trainplan.plan_steps(3, eval_shares, 4, 2) == (1, 3)  # never a zero budget


def test_the_log_line_says_how_to_get_shards_per_node():
    line = trainplan.describe_shares("eval", shards(10, 0), trainplan.plan_shares("eval", shards(10, 0), "/d", 2))
    assert line.startswith("eval shards hold [10, 0] records") and "keeps one record in 2" in line
    assert "num_shards >= 2" in line and "[5, 5] records per node" in line
    line = trainplan.describe_shares("train", shards(10, 20), trainplan.plan_shares("train", shards(10, 20), "/d", 2))
    assert line == "train shards hold [10, 20] records; nodes read [20, 10] records each"
