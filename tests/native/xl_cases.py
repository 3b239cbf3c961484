"""Cases for xenopsd.native.xl run against mocks/mock_xl.c (LD_PRELOAD).

The libxl underneath is the real one: its context, its JSON parser and
printer and its event machinery run for real; only the calls that would
reach a hypervisor are the mock's (see the mock's header comment).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pickle
import threading
from pathlib import Path
from typing import Any

from xenopsd.native import xl

MOCK = ctypes.CDLL(None)
MOCK.mock_xl_fail.argtypes = [ctypes.c_char_p, ctypes.c_int]
MOCK.mock_xl_hold.argtypes = [ctypes.c_int]
MOCK.mock_xl_log.restype = ctypes.c_char_p

XTL_DEBUG, XTL_ERROR = 1, 8

HVM: dict[str, Any] = {
    "c_info": {"type": "hvm", "name": "vm1", "uuid": "c0ffee00-0000-4000-8000-000000000001"},
    "b_info": {"max_vcpus": 2, "max_memkb": 1048576, "target_memkb": 1048576,
               "type.hvm": {"bios": "seabios"}},
    "disks": [{"pdev_path": "/dev/sdb", "vdev": "xvda", "format": "raw", "readwrite": 1}],
    "nics": [{"mac": "00:16:3e:01:02:03", "bridge": "xenbr0"}],
}
PV: dict[str, Any] = {"c_info": {"type": "pv", "name": "pv1"},
      "b_info": {"max_vcpus": 1, "max_memkb": 262144, "type.pv": {"kernel": "/boot/vmlinuz"}}}


def expect(exc_type: type[BaseException], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call fn and return the exception it must raise."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} did not raise {exc_type.__name__}")


class Recorder:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.cv = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self.cv:
            self.items.append(args if len(args) != 1 else args[0])
            self.cv.notify_all()

    def wait_for(self, n: int) -> list[Any]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.items) >= n, timeout=30), self.items
            return list(self.items)


def context(events: Recorder | None = None) -> tuple[Any, Recorder]:
    log = Recorder()
    return xl.Context(logger=log, min_level=XTL_DEBUG, event_handler=events), log


def mock_log() -> list[str]:
    text: bytes = MOCK.mock_xl_log()
    return text.decode().splitlines()


def wait_pending(n: int, worker: threading.Thread | None = None) -> None:
    """Wait until n operations are held in the mock (or the worker gave up)."""
    while MOCK.mock_xl_pending() != n and (worker is None or worker.is_alive()):
        threading.Event().wait(0.001)


def with_event_thread(ctx: Any) -> threading.Thread:
    # daemon: a failing case must end its process, not wait for a loop never closed
    t = threading.Thread(target=ctx.run_events, name="libxl-events", daemon=True)
    t.start()
    return t


def case_config_json_roundtrip() -> None:
    ctx, _ = context()
    cfg = ctx.domain_config(json.dumps(HVM))
    out = json.loads(cfg.to_json())
    assert out["c_info"]["name"] == "vm1" and out["c_info"]["type"] == "hvm"
    assert out["c_info"]["uuid"] == HVM["c_info"]["uuid"]
    assert out["b_info"]["max_vcpus"] == 2 and out["b_info"]["max_memkb"] == 1048576
    assert out["b_info"]["type.hvm"]["bios"] == "seabios"
    assert out["disks"][0]["vdev"] == "xvda" and out["disks"][0]["format"] == "raw"
    assert out["nics"][0]["mac"] == "00:16:3e:01:02:03"
    # libxl's printed form is a fixed point of parse-and-print
    again = ctx.domain_config(cfg.to_json().encode())
    assert again.to_json() == cfg.to_json()
    ctx.close()


def case_config_json_errors() -> None:
    ctx, log = context()
    e = expect(xl.XlError, ctx.domain_config, "{not json")
    assert (e.rc, e.name, e.call, e.errno) == (-3, "ERROR_FAIL",
                                               "libxl_domain_config_from_json", errno.EIO)
    assert isinstance(e, OSError) and isinstance(e, xl.XlError)
    assert any(item[0] == XTL_ERROR for item in log.items), log.items  # libxl logged why
    expect(TypeError, ctx.domain_config, 42)
    copy = pickle.loads(pickle.dumps(e))
    assert (copy.rc, copy.name, copy.call) == (e.rc, e.name, e.call)


def case_create_and_lifecycle_sync() -> None:
    ctx, _ = context()
    domid = ctx.domain_create_new(ctx.domain_config(json.dumps(HVM)))
    assert domid == 1
    # the mock read these back from the libxl_domain_config it was handed
    assert ("create 1 name=vm1 type=1 vcpus=2 memkb=1048576 disks=1 vdev=xvda "
            "nics=1 bridge=xenbr0") in mock_log()
    info = ctx.domain_info(domid)
    assert info["paused"] and not info["running"] and info["domain_type"] == 1
    assert info["uuid"] == bytes.fromhex("c0ffee0000004000800000000000000" "1")
    ctx.domain_unpause(domid)
    assert ctx.domain_info(domid)["running"]
    ctx.domain_pause(domid)
    assert ctx.domain_info(domid)["paused"]
    pv = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    assert [d["domid"] for d in ctx.list_domains()] == [domid, pv]
    stored = json.loads(ctx.retrieve_domain_configuration(pv).to_json())
    assert stored["c_info"]["name"] == "pv1"
    ctx.domain_destroy(domid)
    e = expect(xl.XlError, ctx.domain_info, domid)
    assert (e.rc, e.name, e.errno) == (-21, "ERROR_DOMAIN_NOTFOUND", errno.ESRCH)
    assert [d["domid"] for d in ctx.list_domains()] == [pv]


def case_error_mapping() -> None:
    ctx, _ = context()
    domid = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    MOCK.mock_xl_fail(b"libxl_domain_pause", -9)
    e = expect(xl.XlError, ctx.domain_pause, domid)
    assert (e.rc, e.name, e.call, e.errno) == (-9, "ERROR_TIMEDOUT", "libxl_domain_pause",
                                               errno.ETIMEDOUT)
    assert str(e) == "[Errno 110] libxl_domain_pause: ERROR_TIMEDOUT"
    ctx.domain_pause(domid)  # one failure only
    hvm = ctx.domain_create_new(ctx.domain_config(json.dumps(HVM)))
    e = expect(xl.XlError, ctx.domain_shutdown, hvm)
    assert e.name == "ERROR_NOPARAVIRT"
    MOCK.mock_xl_fail(b"libxl_list_domain", -3)
    assert expect(xl.XlError, ctx.list_domains).call == "libxl_list_domain"
    assert xl.error_name(-22) == "ERROR_ABORTED" and xl.error_name(-1000) == "ERROR_-1000"


def case_async_operations_complete_through_future() -> None:
    ctx, _ = context()
    t = with_event_thread(ctx)
    op = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)), asynchronous=True)
    assert isinstance(op, xl.Operation) and op.call == "libxl_domain_create_new"
    domid = op.result(timeout=30)
    assert domid == 1 and ctx.domain_info(domid)["paused"]
    op = ctx.domain_unpause(domid, asynchronous=True)
    assert op.result(timeout=30) is None and ctx.domain_info(domid)["running"]
    assert not op.future.cancel()  # only libxl can stop an operation
    MOCK.mock_xl_fail(b"libxl_domain_pause", -6)
    e = ctx.domain_pause(domid, asynchronous=True).future.exception(timeout=30)
    assert isinstance(e, xl.XlError) and e.name == "ERROR_INVAL" and e.errno == errno.EINVAL
    # many operations in flight at once, completed from several threads
    ops = [ctx.domain_pause(domid, asynchronous=True) for _ in range(50)]
    assert [o.result(timeout=30) for o in ops] == [None] * 50
    ctx.close()
    t.join(timeout=30)
    assert not t.is_alive()


def case_async_start_failure_raises_at_once() -> None:
    ctx, _ = context()
    spec = json.dumps({"vdev": "xvdb", "pdev_path": "/dev/sdc"})
    e = expect(xl.XlError, ctx.device, "disk", "add", 99, spec, asynchronous=True)
    assert e.name == "ERROR_DOMAIN_NOTFOUND" and e.call == "libxl_device_disk_add"


def case_abort() -> None:
    ctx, _ = context()
    domid = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    MOCK.mock_xl_hold(1)
    op = ctx.domain_unpause(domid, asynchronous=True)
    wait_pending(1)
    assert op.abort() is True
    e = op.future.exception(timeout=30)
    assert isinstance(e, xl.XlError) and e.name == "ERROR_ABORTED" and e.errno == errno.ECANCELED
    assert ctx.domain_info(domid)["paused"]  # the aborted unpause did not happen
    assert op.abort() is False  # already finished
    MOCK.mock_xl_hold(0)


def case_gil_released_in_sync_call() -> None:
    """A synchronous libxl call blocked in C must not stop other Python threads.

    The mock holds the call until this thread releases it; a binding that
    kept the GIL would leave the mock to time out, and the call would fail
    with ERROR_TIMEDOUT.
    """
    ctx, _ = context()
    domid = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    MOCK.mock_xl_hold(1)
    results: list[Any] = []

    def worker() -> None:
        try:
            results.append(ctx.domain_unpause(domid))
        except BaseException as e:
            results.append(e)

    t = threading.Thread(target=worker)
    t.start()
    wait_pending(1, t)
    spins = sum(1 for _ in range(10000))
    MOCK.mock_xl_release()
    t.join()
    assert spins == 10000 and results == [None], results
    assert ctx.domain_info(domid)["running"]


def case_devices() -> None:
    ctx, _ = context()
    domid = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    disk = {"pdev_path": "/dev/sdc", "vdev": "xvdb", "format": "raw", "readwrite": 1}
    ctx.device("disk", "add", domid, json.dumps(disk))
    ctx.device("disk", "remove", domid, json.dumps(disk))
    ctx.device("disk", "destroy", domid, json.dumps(disk).encode())
    nic = {"mac": "00:16:3e:aa:bb:cc", "bridge": "xenbr1", "devid": 2}
    t = with_event_thread(ctx)
    assert ctx.device("nic", "add", domid, json.dumps(nic), asynchronous=True).result(30) is None
    ctx.close()
    t.join(30)
    ctx, _ = context()
    ctx.device("pci", "add", domid, json.dumps({"domain": 0, "bus": 3, "dev": 0, "func": 1}))
    ctx.device("nic", "remove", domid, json.dumps(nic))
    lines = [ln for ln in mock_log() if ln.startswith("libxl_device_") and "=" in ln]
    assert lines == [
        "libxl_device_disk_add 1 vdev=xvdb pdev_path=/dev/sdc format=4 readwrite=1",
        "libxl_device_disk_remove 1 vdev=xvdb pdev_path=/dev/sdc format=4 readwrite=1",
        "libxl_device_disk_destroy 1 vdev=xvdb pdev_path=/dev/sdc format=4 readwrite=1",
        "libxl_device_nic_add 1 mac=00:16:3e:aa:bb:cc bridge=xenbr1 devid=2",
        "libxl_device_pci_add 1 sbdf=0000:03:00.1",
        "libxl_device_nic_remove 1 mac=00:16:3e:aa:bb:cc bridge=xenbr1 devid=2",
    ], lines
    expect(ValueError, ctx.device, "usb", "add", domid, "{}")
    expect(ValueError, ctx.device, "disk", "plug", domid, "{}")
    e = expect(xl.XlError, ctx.device, "disk", "add", domid, "[1, 2")
    assert e.call == "libxl_device_disk_from_json"


def case_suspend_resume_restore() -> None:
    ctx, _ = context()
    cfg = ctx.domain_config(json.dumps(PV))
    domid = ctx.domain_create_new(cfg)
    r, w = os.pipe()
    ctx.domain_suspend(domid, w, live=True)
    assert "libxl_domain_suspend 1 flags=2" in mock_log()
    info = ctx.domain_info(domid)
    assert info["shutdown"] and info["shutdown_reason"] == 2  # suspend
    ctx.domain_resume(domid)
    assert not ctx.domain_info(domid)["shutdown"]
    e = expect(xl.XlError, ctx.domain_resume, domid)  # not suspended any more
    assert e.name == "ERROR_INVAL"
    new = ctx.domain_create_restore(cfg, r)
    assert new == 2 and "restore stream_version=2 checkpointed=0" in mock_log()
    t = with_event_thread(ctx)
    r2, w2 = os.pipe()
    assert ctx.domain_suspend(new, w2, asynchronous=True).result(30) is None
    op = ctx.domain_create_restore(cfg, r2, asynchronous=True)
    assert op.result(30) == 3
    os.write(w, b"garbage!")
    e = expect(xl.XlError, ctx.domain_create_restore, cfg, r)
    assert e.name == "ERROR_BADFAIL"
    ctx.close()
    t.join(30)


def case_death_events() -> None:
    events = Recorder()
    ctx, _ = context(events)
    pv = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    other = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    watch = ctx.evenable_domain_death(pv, 77)
    unwatched = ctx.evenable_domain_death(other, 78)
    unwatched.disable()
    unwatched.disable()  # twice is harmless
    ctx.domain_shutdown(pv)
    ctx.domain_destroy(other)
    ctx.domain_destroy(pv)
    got = events.wait_for(2)
    assert [(e["type"], e["domid"], e["for_user"]) for e in got] == [
        ("domain_shutdown", pv, 77), ("domain_death", pv, 77)], got
    assert got[0]["shutdown_reason"] == 0
    watch.disable()


def case_run_events_and_close() -> None:
    ctx, _ = context()
    t = with_event_thread(ctx)
    while not t.is_alive():
        threading.Event().wait(0.001)
    e = None
    for _ in range(1000):   # wait until the loop has really started
        try:
            ctx.run_events()
        except RuntimeError as exc:
            e = exc
            break
        threading.Event().wait(0.01)
    assert isinstance(e, RuntimeError)
    ctx.close()
    t.join(timeout=30)
    assert not t.is_alive() and ctx.closed
    e = expect(xl.XlError, ctx.domain_pause, 1)
    assert "closed" in str(e)
    ctx.close()


def case_event_handler_exception_is_contained() -> None:
    def bad(event: dict[str, Any]) -> None:
        raise RuntimeError("handler broke")

    ctx = xl.Context(event_handler=bad)
    pv = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    ctx.evenable_domain_death(pv)
    ctx.domain_destroy(pv)
    assert ctx.list_domains() == []


def case_close_waits_for_pending_operations() -> None:
    """libxl must not be freed under an operation it still owns."""
    ctx, _ = context()
    domid = ctx.domain_create_new(ctx.domain_config(json.dumps(PV)))
    t = with_event_thread(ctx)
    MOCK.mock_xl_hold(1)
    op = ctx.domain_unpause(domid, asynchronous=True)
    wait_pending(1)
    ctx.close()
    assert ctx.closed
    expect(xl.XlError, ctx.domain_pause, domid, asynchronous=True)
    t.join(timeout=0.2)
    assert t.is_alive()  # the event loop waits for the operation
    MOCK.mock_xl_release()
    assert op.result(timeout=30) is None
    t.join(timeout=30)
    assert not t.is_alive()


def case_triggers_and_memory() -> None:
    ctx, _ = context()
    hvm = ctx.domain_create_new(ctx.domain_config(json.dumps(HVM)))
    assert ctx.get_free_memory() == (16 << 20) - 1048576
    ctx.set_memory_target(hvm, 524288)
    assert ctx.get_memory_target(hvm) == 524288
    assert ctx.domain_info(hvm)["max_memkb"] == 524288  # enforce=True
    ctx.set_memory_target(hvm, 1024, relative=True, enforce=False)
    assert ctx.get_memory_target(hvm) == 525312 and ctx.domain_info(hvm)["max_memkb"] == 524288
    e = expect(xl.XlError, ctx.set_memory_target, hvm, -10**9, relative=True)
    assert e.name == "ERROR_INVAL"
    ctx.domain_setmaxmem(hvm, 2097152)
    assert ctx.domain_info(hvm)["max_memkb"] == 2097152
    # no PV drivers: the clean shutdown is refused, the power button works
    assert expect(xl.XlError, ctx.domain_shutdown, hvm).name == "ERROR_NOPARAVIRT"
    ctx.send_trigger(hvm, "reset", 0)
    ctx.send_trigger(hvm, "power")
    assert "trigger 1 reset vcpu=0" in mock_log() and "trigger 1 power vcpu=0" in mock_log()
    assert expect(xl.XlError, ctx.domain_info, hvm).name == "ERROR_DOMAIN_NOTFOUND"
    expect(ValueError, ctx.send_trigger, hvm, "kick")
    assert expect(xl.XlError, ctx.domain_setmaxmem, hvm, 1).errno == errno.ESRCH


def case_vcpus_sched_host() -> None:
    ctx, _ = context()
    domid = ctx.domain_create_new(ctx.domain_config(json.dumps(HVM)))  # 2 vCPUs
    vcpus = ctx.list_vcpus(domid)
    assert [(v["vcpuid"], v["online"], v["cpumap"]) for v in vcpus] == [
        (0, True, list(range(8))), (1, True, list(range(8)))]
    ctx.set_vcpuaffinity(domid, 1, hard=[2, 3], soft=[3])
    ctx.set_vcpuaffinity(domid, 0, soft=[5])
    vcpus = ctx.list_vcpus(domid)
    assert (vcpus[1]["cpumap"], vcpus[1]["cpumap_soft"]) == ([2, 3], [3])
    assert (vcpus[0]["cpumap"], vcpus[0]["cpumap_soft"]) == (list(range(8)), [5])
    assert expect(xl.XlError, ctx.set_vcpuaffinity, domid, 0, hard=[9]).name == "ERROR_INVAL"
    expect(ValueError, ctx.set_vcpuaffinity, domid, 0, hard=[-1])
    ctx.set_vcpuonline(domid, [0])
    assert [v["online"] for v in ctx.list_vcpus(domid)] == [True, False]
    t = with_event_thread(ctx)
    assert ctx.set_vcpuonline(domid, {0, 1}, asynchronous=True).result(30) is None
    assert [v["online"] for v in ctx.list_vcpus(domid)] == [True, True]
    ctx.sched_params_set(domid, weight=512)
    ctx.sched_params_set(domid, cap=40)
    p = ctx.sched_params_get(domid)
    assert (p["sched"], p["weight"], p["cap"]) == (5, 512, 40)
    assert expect(xl.XlError, ctx.sched_params_set, domid, weight=0).name == "ERROR_INVAL"
    MOCK.mock_xl_fail(b"libxl_list_vcpu", -3)
    assert expect(xl.XlError, ctx.list_vcpus, domid).call == "libxl_list_vcpu"
    phys = ctx.physinfo()
    assert phys["nr_cpus"] == 8 and phys["cap_hvm"] and phys["cap_gnttab_v2"]
    assert not phys["cap_shadow"]
    v = ctx.version_info()
    assert (v["major"], v["minor"], v["extra"]) == (4, 17, ".7-mock")
    ctx.close()
    t.join(30)


def case_python_children_are_not_reaped_by_libxl() -> None:
    """libxl owns SIGCHLD but must reap only its own children (selective reap).

    A child of ours becomes a zombie while libxl's event loop runs (libxl's
    SIGCHLD handler wakes it); it must still be there for our waitpid.
    """
    ctx, _ = context()
    t = with_event_thread(ctx)
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        stat = Path(f"/proc/{pid}/stat")
        try:
            while stat.read_text().split(")")[-1].split()[0] != "Z":
                threading.Event().wait(0.001)
        except FileNotFoundError:
            raise AssertionError("libxl reaped a child that was not its own") from None
        threading.Event().wait(0.2)  # libxl's loop has had its chance to reap
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
    ctx.close()
    t.join(30)


def case_none_config_is_a_type_error() -> None:
    ctx, _ = context()
    expect(TypeError, ctx.domain_create_new, None)
    expect(TypeError, ctx.domain_create_restore, None, 0)
