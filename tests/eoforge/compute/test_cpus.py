"""The CPUs a process may use (eoforge.compute.cpus): cgroup v1 and v2 quotas read from fake
hierarchies, and, where this machine lets root make one, a real child cgroup with a 1-CPU quota
whose process sizes OpenVINO's and ONNX Runtime's thread pools to it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from eoforge.compute.cpus import cgroup_cpu_quota


def _proc(tmp: Path, cgroup: str, mounts: list[str]) -> tuple[Path, Path]:
    (tmp / "cgroup").write_text(cgroup)
    (tmp / "mountinfo").write_text("\n".join(mounts) + "\n")
    return tmp / "cgroup", tmp / "mountinfo"


def test_v2_cpu_max_tightest_along_the_path(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    leaf = root / "kubepods" / "pod1" / "ctr"
    leaf.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "cpu.max").write_text("400000 100000\n")  # 4 CPUs for all pods
    (root / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")  # 1.5 for this one
    (leaf / "cpu.max").write_text("max 100000\n")
    mount = f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
    cg, mi = _proc(tmp_path, "0::/kubepods/pod1/ctr\n", [mount])
    assert cgroup_cpu_quota(cg, mi) == pytest.approx(1.5)
    (root / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(cg, mi) == pytest.approx(4.0)
    (root / "kubepods" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(cg, mi) is None


def test_v2_namespaced_container_reads_its_mount(tmp_path: Path) -> None:
    """Inside a cgroup namespace the path is '/', and the mount is the container's cgroup."""
    root = tmp_path / "fs"
    root.mkdir()
    (root / "cpu.max").write_text("200000 100000\n")
    mount = f"30 25 0:26 / {root} rw - cgroup2 cgroup2 rw"
    cg, mi = _proc(tmp_path, "0::/\n", [mount])
    assert cgroup_cpu_quota(cg, mi) == pytest.approx(2.0)


def test_v1_cpu_controller_and_a_path_from_outside_the_container(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    mounts = [
        f"40 30 0:35 /docker/abc {cpu} rw - cgroup cgroup rw,cpu,cpuacct",
        f"41 30 0:36 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory",
        f"42 30 0:37 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw",
    ]
    # docker without a cgroup namespace: the host's path, the container's cgroup mounted at /
    text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/docker/abc\n"
    cg, mi = _proc(tmp_path, text, mounts)
    assert cgroup_cpu_quota(cg, mi) == pytest.approx(2.5)
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(cg, mi) is None


def test_unreadable_or_malformed_files_mean_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path / "missing") is None
    root = tmp_path / "fs"
    root.mkdir()
    (root / "cpu.max").write_text("lots\n")
    cg, mi = _proc(tmp_path, "garbage\n0::/\n", [f"1 1 0:1 / {root} rw - cgroup2 cgroup2 rw"])
    assert cgroup_cpu_quota(cg, mi) is None


#: A 1x1 conv from 'image' to 'logits', opened by OpenVINO in the child when asked to.
_CHILD = """
import sys
from eoforge.compute.cpus import usable_cpus, cpu_limit
from eoforge.inference.session import session_options
threads = session_options(None).intra_op_num_threads
ov = "-"
if len(sys.argv) > 1:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save
    from eoforge.inference.openvino_session import OpenVINOSession
    w = numpy_helper.from_array(np.ones((2, 4, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 4, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2, "h", "w"])], [w])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
         sys.argv[1])
    session = OpenVINOSession(sys.argv[1])
    session.run(None, {"image": np.ones((1, 4, 8, 8), np.float32)})
    request, _ = session._requests[(1, 4, 8, 8)]
    compiled = request.get_compiled_model()
    ov = f"{compiled.get_property('INFERENCE_NUM_THREADS')}"
    ov += f"/{compiled.get_property('ENABLE_CPU_PINNING')}"
print(usable_cpus(), cpu_limit(), threads, ov)
"""


def _child(env: dict[str, str], pre: str = "", model: Path | None = None) -> list[str]:
    args = [str(model)] if model is not None else []
    out = subprocess.run(
        ["sh", "-c", f'{pre}exec "$0" -c "$@"', sys.executable, _CHILD, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.split()


def test_environment_override_and_a_machine_of_its_own(tmp_path: Path) -> None:
    assert _child({"EOFORGE_CPUS": "1"}) == ["1", "1", "1", "-"]
    if len(os.sched_getaffinity(0)) > 1:
        # OpenVINO pins its threads to the first cores: one thread per process (Dask workers,
        # pods) unpinned, or every such process would share core 0; all cores stay pinned
        assert _child({"EOFORGE_CPUS": "1"}, model=tmp_path / "a.onnx")[3] == "1/False"
        full = _child({"EOFORGE_CPUS": ""}, model=tmp_path / "b.onnx")[3]
        assert full.endswith("/True")
    assert _child({"EOFORGE_CPUS": "nonsense"})[0] == str(len(os.sched_getaffinity(0)))
    if cgroup_cpu_quota() is None and len(os.sched_getaffinity(0)) == os.cpu_count():
        # nothing limits this process: the runtimes keep their own defaults (0 = onnxruntime's)
        assert _child({"EOFORGE_CPUS": ""})[1:3] == ["None", "0"]
        assert _child({"EOFORGE_CPUS": "nonsense"})[1:3] == ["None", "0"]  # ignored


def _writable_cpu_cgroup() -> tuple[str, Path] | None:
    if os.geteuid() != 0:
        return None
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").is_file() and os.access(v1, os.W_OK):
        return "v1", v1
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.subtree_control"
    cpu = controllers.is_file() and "cpu" in controllers.read_text().split()
    if cpu and os.access(v2, os.W_OK):
        return "v2", v2
    return None


@pytest.mark.skipif(
    _writable_cpu_cgroup() is None or cgroup_cpu_quota() is not None,
    reason="needs root and a writable cgroup cpu controller, and no quota already set",
)
def test_a_real_one_cpu_quota_sizes_the_inference_thread_pools(tmp_path: Path) -> None:
    found = _writable_cpu_cgroup()
    assert found is not None
    version, base = found
    group = base / f"eoforge-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if version == "v1":
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text("100000")
        else:
            (group / "cpu.max").write_text("100000 100000")
        join = f"echo $$ > {group / 'cgroup.procs'} && "
        model = tmp_path / "conv.onnx"
        usable, limit, ort_threads, ov_threads = _child({"EOFORGE_CPUS": ""}, join, model)
        pinned = "True" if os.cpu_count() == 1 else "False"  # one thread of 2+ cores: unpinned
        assert (usable, limit, ort_threads, ov_threads) == ("1", "1", "1", f"1/{pinned}")
    finally:
        group.rmdir()
