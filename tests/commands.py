"""Run pdnsr's commands as a user does, in a process of their own, without paying Python's imports each time.

A command run from a shell spends about 7 s of CPU importing torch, torchvision, basicsr and open_clip before it
reads its first argument, and the tests run well over a hundred of them. :func:`run` starts each command in a
fresh process forked from a server that has made those imports once (``python tests/commands.py``, started on the
first call): the child takes the command's argv, working directory and environment, runs the script or module as
``__main__`` exactly as ``python SCRIPT ARGS`` / ``python -m MODULE ARGS`` would, with stdin closed and its stdout
and stderr captured, and exits with the command's status. Nothing of pdnsr is imported or run by the server
itself, so every command starts from the state a new interpreter would reach after the same imports.

``PDNSR_TEST_FORK=0`` runs every command as a plain subprocess instead (slower, the same results).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
# What a pdnsr command imports before it does anything; imported once, in the server.
PRELOAD = ('torch', 'torchvision', 'numpy', 'cv2', 'lmdb', 'open_clip', 'pdnsr', 'basicsr.train', 'basicsr.test')


def _serve():
    """The server: preload, then fork one child per request line (JSON) and answer with its exit status."""
    import importlib
    import runpy

    for name in PRELOAD:
        importlib.import_module(name)
    lock = threading.Lock()

    def answer(request_id, status):
        with lock:
            sys.stdout.write(json.dumps({'id': request_id, 'status': status}) + '\n')
            sys.stdout.flush()

    def wait(request_id, pid):
        _, status = os.waitpid(pid, 0)
        answer(request_id, os.waitstatus_to_exitcode(status))

    for line in sys.stdin:  # fork here, in the main thread: the waiting threads hold no lock a child could need
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, runpy)
        threading.Thread(target=wait, args=(request['id'], pid), daemon=True).start()


def _child(request, runpy):
    """In the forked child: become the command, run it, exit with its status (never returns)."""
    status = 1
    try:
        os.setsid()  # its own session, as a command started from a shell
        signal.alarm(max(1, int(request['timeout'])))  # past its time the command is killed (SIGALRM)
        os.chdir(request['cwd'])
        os.environ.clear()
        os.environ.update(request['env'])
        for fd, path in ((0, os.devnull), (1, request['stdout']), (2, request['stderr'])):
            mode = os.O_RDONLY if fd == 0 else os.O_WRONLY
            os.dup2(os.open(path, mode), fd)
        sys.stdin = open(os.devnull)
        sys.stdout = open(1, 'w', buffering=1, closefd=False)
        sys.stderr = open(2, 'w', buffering=1, closefd=False)
        if request.get('memory'):  # what the command may allocate beyond what it holds at its start
            import resource

            with open('/proc/self/statm') as f:
                held = int(f.read().split()[0]) * os.sysconf('SC_PAGE_SIZE')
            resource.setrlimit(resource.RLIMIT_AS, (held + request['memory'], resource.RLIM_INFINITY))
        threads = os.environ.get('OMP_NUM_THREADS')
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        argv = request['argv']
        try:
            if argv[0] == '-m':
                sys.argv = [argv[1], *argv[2:]]
                sys.path[0] = request['cwd']
                runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
            else:
                sys.argv = list(argv)
                sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
                runpy.run_path(argv[0], run_name='__main__')
            status = 0
        except SystemExit as err:
            status = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
            if err.code is not None and not isinstance(err.code, int):
                print(err.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            status = 1
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


class _Server:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(HERE),
        )
        self.lock, self.waiting, self.next_id = threading.Lock(), {}, 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            reply = json.loads(line)
            self.waiting.pop(reply['id']).set_result(reply['status'])

    def submit(self, request):
        from concurrent.futures import Future

        future = Future()
        with self.lock:
            request['id'] = self.next_id
            self.next_id += 1
            self.waiting[request['id']] = future
            self.proc.stdin.write(json.dumps(request) + '\n')
            self.proc.stdin.flush()
        return future


_SERVER = None
_SERVER_LOCK = threading.Lock()


def run(argv, cwd=None, env=None, timeout=300, memory=None):
    """Run one command and wait for it, like ``subprocess.run(argv, capture_output=True, text=True)``.

    Args:
        argv (list[str]): ``[sys.executable, SCRIPT, *args]`` or ``[sys.executable, '-m', MODULE, *args]``.
        cwd (str | None): its working directory (default this one).
        env (dict | None): its whole environment (default this process's).
        timeout (float): seconds before it is killed (``subprocess.TimeoutExpired``).
        memory (int | None): bytes of address space it may add to what the imports hold (``RLIMIT_AS``): a
            machine that runs out of memory.

    Returns:
        subprocess.CompletedProcess: ``returncode``, ``stdout``, ``stderr``.
    """
    global _SERVER
    cwd = os.path.abspath(cwd or os.getcwd())
    env = dict(os.environ if env is None else env)
    if (os.environ.get('PDNSR_TEST_FORK', '1') == '0' or argv[0] != sys.executable) and not memory:
        return subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    with _SERVER_LOCK:
        if _SERVER is None or _SERVER.proc.poll() is not None:
            _SERVER = _Server()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, 'stdout'), os.path.join(tmp, 'stderr')
        for path in (out, err):
            open(path, 'w').close()
        request = {'argv': argv[1:], 'cwd': cwd, 'env': env, 'stdout': out, 'stderr': err, 'timeout': timeout}
        request['memory'] = memory
        status = _SERVER.submit(request).result()
        if status == -signal.SIGALRM:
            raise subprocess.TimeoutExpired(argv, timeout)
        with open(out) as f_out, open(err) as f_err:
            return subprocess.CompletedProcess(argv, status, f_out.read(), f_err.read())


def launch(opt, root, script='train', args=(), timeout=300, env=None, threads=1):
    """:func:`pdnsr.tools.experiments.runs.launch` of one process (the same option file, environment and log file,
    the log being the command's stdout, then its stderr) through :func:`run`. Returns its ``RunResult``."""
    import time

    from pdnsr.tools.experiments.runs import RunResult, run_command

    command, environ, log_path = run_command(opt, str(root), script, args, threads=threads, env=env)
    start = time.time()
    proc = run(command, cwd=str(root), env=environ, timeout=timeout)
    with open(log_path, 'w', encoding='utf-8') as log:
        log.write(proc.stdout + proc.stderr)
    tail = '\n'.join((proc.stdout + proc.stderr).rstrip().splitlines()[-40:])
    return RunResult(proc.returncode, tail, time.time() - start, log_path)


if __name__ == '__main__':
    _serve()
