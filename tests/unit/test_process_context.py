"""How pagedlm starts its processes (pagedlm/process_context.py): a forkserver on CPU, spawn on
CUDA; the parent's environment reaching a forkserver's child; process names; and the engine
core's watchdog following a parent that is not its OS parent."""

from __future__ import annotations

import multiprocessing.forkserver
import os
import subprocess
import sys
import textwrap

import pytest

from pagedlm import process_context


def test_cuda_children_are_spawned_and_cpu_children_fork_from_a_preloaded_forkserver() -> None:
    assert process_context.context("cuda").get_start_method() == "spawn"
    ctx = process_context.context("cpu", ["transformers.models.llama.configuration_llama", "torch"])
    assert ctx.get_start_method() == "forkserver"
    preload = multiprocessing.forkserver._forkserver._preload_modules
    assert preload[:len(process_context.PRELOAD)] == list(process_context.PRELOAD)
    assert preload[len(process_context.PRELOAD):] == ["transformers.models.llama.configuration_llama"]


def test_start_early_skips_cuda() -> None:
    assert process_context.start_early("cuda") is False


def test_a_gguf_models_core_gets_modeling_utils_preloaded() -> None:
    from pagedlm.entrypoints.openai.api_server import core_preload

    assert core_preload("/models/SmolLM2.Q4_1.gguf") == ("transformers.modeling_utils",)
    assert core_preload("/models/llama") == () and core_preload(None) == ()


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"  # a file: a forkserver's child imports its target from it
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)


def test_a_forkserver_child_gets_the_parents_environment_of_now(tmp_path) -> None:
    # The forkserver starts with A=1 and B=1; then the parent sets A=2 and drops B.
    code = """
        import multiprocessing
        import multiprocessing.forkserver
        import os
        from pagedlm import process_context

        def child(env, queue):
            before = (os.environ.get("A"), os.environ.get("B"))
            process_context.apply_env(env)
            queue.put((before, os.environ.get("A"), os.environ.get("B"), os.environ.get("C")))

        if __name__ == "__main__":
            os.environ.update(A="1", B="1")
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([])  # the mechanism without the engine's imports (seconds)
            multiprocessing.forkserver.ensure_running()
            os.environ["A"] = "2"
            del os.environ["B"]
            queue = ctx.Queue()
            p = ctx.Process(target=child, args=(process_context.child_env({"C": "3"}), queue))
            p.start()
            print(queue.get(timeout=60))
            p.join()
    """
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    # without apply_env the child would see the forkserver's A=1, B=1
    assert out.stdout.strip() == "(('1', '1'), '2', None, '3')"


def test_set_process_name_shows_in_proc_comm(tmp_path) -> None:
    if not os.path.exists("/proc/self/comm"):
        pytest.skip("no /proc")
    out = _run("""
        from pagedlm import process_context
        process_context.set_process_name("pagedlm-core7-and-more")
        print(open("/proc/self/comm").read().strip())
    """, tmp_path)
    assert out.stdout.strip() == "pagedlm-core7-a"  # the kernel keeps 15 characters


def test_watchdog_follows_the_named_parent_not_the_os_parent() -> None:
    # A child whose logical parent is an unrelated process (as an engine core's is, under a
    # forkserver): it must exit once that process is gone, although its OS parent lives on.
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    watched = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pagedlm.engine.core_launcher import exit_with_parent
        exit_with_parent({other.pid}, "test child")
        print("watching", flush=True)
        time.sleep(60)
        sys.exit(5)
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watched.stdout.readline().strip() == "watching"
        assert watched.poll() is None
        other.stdin.close()
        other.wait(timeout=30)
        assert watched.wait(timeout=30) == 1
        assert "is gone" in watched.stderr.read()
    finally:
        for p in (other, watched):
            if p.poll() is None:
                p.kill()


def test_an_early_forkserver_ends_with_the_process_that_started_it(tmp_path) -> None:
    # A server that refuses its options exits within seconds; its forkserver, still importing
    # torch then, must not outlive it (it shares the server's stdout and stderr).
    out_file = tmp_path / "out.txt"
    script = tmp_path / "early.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing.forkserver
        from pagedlm import process_context

        assert process_context.start_early("cpu")
        print(multiprocessing.forkserver._forkserver._forkserver_pid, flush=True)
    """))
    with out_file.open("w") as out:
        assert subprocess.run([sys.executable, str(script)], stdout=out, timeout=120).returncode == 0
    pid = int(out_file.read_text())
    # gone already, not after its imports (seconds): no wait here
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("thread_lock", [False, True])
def test_a_progress_bar_in_a_child_that_exits_hard_leaks_no_semaphore(tmp_path, thread_lock) -> None:
    # An engine core ends with os._exit; a tqdm bar (GGUF loading) made its default lock, a
    # multiprocessing semaphore, which the resource tracker then reported as leaked.
    out = _run(f"""
        import multiprocessing
        import os

        def child():
            from pagedlm import process_context
            if {thread_lock}:
                process_context.thread_lock_progress_bars()
            from tqdm import tqdm
            for _ in tqdm(range(3), disable=False, file=open(os.devnull, "w")):
                pass
            os._exit(0)

        if __name__ == "__main__":
            p = multiprocessing.get_context("spawn").Process(target=child)
            p.start()
            p.join()
    """, tmp_path)
    assert out.returncode == 0
    assert ("leaked semaphore" in out.stderr) is not thread_lock, out.stderr


def test_start_early_preloads_what_the_coming_children_need(tmp_path) -> None:
    out = _run("""
        import sys
        from pagedlm import process_context

        def child(queue):
            queue.put("colorsys" in sys.modules)

        if __name__ == "__main__":
            process_context.PRELOAD = ()  # the mechanism without the engine's imports (seconds)
            assert "colorsys" not in sys.modules
            assert process_context.start_early("cpu", ["colorsys"])
            ctx = process_context.context("cpu")
            queue = ctx.Queue()
            p = ctx.Process(target=child, args=(queue,))
            p.start()
            print(queue.get(timeout=60), "colorsys" in sys.modules)
            p.join()
    """, tmp_path)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_a_zombie_is_not_a_running_process() -> None:
    # A killed server that its supervisor has not reaped yet is gone for its engine core.
    from pagedlm.engine.core_launcher import process_exists

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert process_exists(child.pid) and process_exists(os.getpid())
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, and left unreaped
        assert not process_exists(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not process_exists(child.pid)
