"""Each rank's place, half set and device from torchrun's or srun's environment."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cryorefine.errors import InputError
from cryorefine.parallel import (
    LaunchEnvironment,
    backend_for,
    first_slurm_host,
    half_sets_of_rank,
    is_distributed_launch,
    launch_environment,
    rank_device,
    ranks_of_half,
    ranks_on_device,
    slurm_tasks_on_node,
)

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "node1",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_USE_AGENT_STORE": "True",
}
SRUN = {
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "5",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_NTASKS": "16",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NODELIST": "gpu[07-08,12]",
    "SLURM_JOB_ID": "123456",
}


def test_torchrun_variables_give_rank_world_and_agent_store():
    env = launch_environment(TORCHRUN)
    assert (env.rank, env.world_size, env.local_rank) == (3, 4, 1)
    assert env.local_world_size == 1  # LOCAL_WORLD_SIZE not set: not known
    assert launch_environment(TORCHRUN | {"LOCAL_WORLD_SIZE": "2"}).local_world_size == 2
    assert (env.master_addr, env.master_port) == ("node1", 29400)
    assert env.launcher == "torchrun"
    assert env.agent_store


def test_srun_variables_give_rank_world_and_the_steps_first_node():
    env = launch_environment(SRUN)
    assert (env.rank, env.world_size, env.local_rank) == (5, 8, 1)
    assert env.master_addr == "gpu07"
    assert env.master_port == 20000 + 123456 % 20000
    assert env.launcher == "slurm"
    assert not env.agent_store


def test_srun_tasks_per_node_give_this_nodes_rank_count():
    assert launch_environment(SRUN).local_world_size == 1  # not given
    per_node = {"SLURM_STEP_TASKS_PER_NODE": "4(x2),2", "SLURM_NODEID": "2"}
    assert launch_environment(SRUN | per_node).local_world_size == 2


@pytest.mark.parametrize(
    ("listed", "node", "tasks"),
    [("4", 0, 4), ("2(x3),1", 0, 2), ("2(x3),1", 2, 2), ("2(x3),1", 3, 1), ("1,3", 1, 3)],
)
def test_slurm_tasks_per_node_list_is_expanded(listed, node, tasks):
    assert slurm_tasks_on_node(listed, node) == tasks


@pytest.mark.parametrize(("listed", "node"), [("2(x3)", 3), ("two", 0), ("2(3)", 0)])
def test_a_bad_slurm_tasks_per_node_list_is_named(listed, node):
    with pytest.raises(InputError, match="SLURM tasks per node"):
        slurm_tasks_on_node(listed, node)


def test_srun_uses_master_addr_and_port_when_given():
    env = launch_environment(SRUN | {"MASTER_ADDR": "login2", "MASTER_PORT": "31000"})
    assert (env.master_addr, env.master_port) == ("login2", 31000)


def test_torchrun_started_by_srun_follows_torchrun():
    env = launch_environment(SRUN | TORCHRUN)
    assert (env.launcher, env.rank, env.world_size) == ("torchrun", 3, 4)


def test_a_batch_script_outside_a_job_step_is_one_process():
    batch_script = {key: value for key, value in SRUN.items() if key != "SLURM_STEP_ID"}
    assert launch_environment(batch_script).world_size == 1
    assert not is_distributed_launch(batch_script)
    assert not is_distributed_launch({})
    assert is_distributed_launch(TORCHRUN)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        (TORCHRUN | {"RANK": "four"}, "RANK"),
        (TORCHRUN | {"RANK": "4"}, "rank 4"),
        ({k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}, "MASTER_ADDR"),
        (SRUN | {"SLURM_PROCID": "8"}, "rank 8"),
    ],
)
def test_bad_launcher_variables_are_named(environ, named):
    with pytest.raises(InputError, match=named):
        launch_environment(environ)


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node3", "node3"),
        ("a1,b2", "a1"),
        ("gpu[07-09,12]", "gpu07"),
        ("gpu[12,07-09],cpu1", "gpu12"),
        ("rack2-n[001-004]", "rack2-n001"),
    ],
)
def test_first_slurm_host_expands_the_first_entry(nodelist, first):
    assert first_slurm_host(nodelist) == first


@given(world=st.integers(1, 64))
def test_every_rank_scores_exactly_one_half_set_and_no_rank_idles(world):
    one, two = ranks_of_half(1, world), ranks_of_half(2, world)
    if world == 1:
        assert one == two == (0,)
        assert half_sets_of_rank(0, 1) == (1, 2)
        return
    assert sorted(one + two) == list(range(world))
    assert len(one) - len(two) == world % 2  # the spare rank joins half set 1
    assert one[0] == 0  # the writer scores half set 1
    for rank in range(world):
        assert half_sets_of_rank(rank, world) == ((1,) if rank in one else (2,))


def _environment(local_rank: int, local_world_size: int = 1) -> LaunchEnvironment:
    return LaunchEnvironment(
        local_rank,
        4,
        local_rank,
        "node1",
        29400,
        "torchrun",
        host="node1",
        local_world_size=local_world_size,
    )


def test_without_gpu_option_every_rank_takes_the_cpu():
    assert rank_device(_environment(2), None) == torch.device("cpu")
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for(torch.device("cuda", 1), ranks_per_device=2) == "gloo"  # NCCL cannot
    assert ranks_on_device(_environment(2, 4), None) == 1


def test_gpu_option_without_cuda_names_the_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="rank 2 on node1"):
        rank_device(_environment(2), "0:1")


@pytest.mark.parametrize(
    ("gpu", "local_rank", "index"),
    [
        ("", 0, 0),
        ("", 3, 1),  # round robin over the 2 visible devices
        ("1:0", 0, 1),
        ("1:0", 1, 0),
        ("1:0", 2, 1),
        ("0,1:1,0", 1, 1),  # RELION: commas list one rank's threads; the first is taken
    ],
)
def test_gpu_option_gives_one_device_per_local_rank(monkeypatch, gpu, local_rank, index):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device(_environment(local_rank), gpu) == torch.device("cuda", index)


def test_a_gpu_id_that_does_not_exist_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match="device 5 does not exist"):
        rank_device(_environment(0), "5:1")


@pytest.mark.parametrize(
    ("gpu", "local_rank", "local_world_size", "sharing"),
    [
        ("0:1", 0, 2, 1),  # one rank per GPU
        ("0:0:1:1", 1, 4, 2),  # RELION's two ranks per GPU
        ("0:0:0:1", 3, 4, 1),
        ("0:0:0:1", 2, 4, 3),
        ("", 1, 4, 2),  # more ranks than the 2 GPUs: round robin
        ("", 1, 1, 1),  # the launcher did not say how many ranks the node runs
    ],
)
def test_ranks_that_share_a_gpu_are_counted(
    monkeypatch, gpu, local_rank, local_world_size, sharing
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ranks_on_device(_environment(local_rank, local_world_size), gpu) == sharing
