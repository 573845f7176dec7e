#!/usr/bin/env python3
"""Runs the vendored Eclipse Paho MQTT interoperability suites (paho/) over mutual TLS.

The suites open plain TCP sockets. This wrapper replaces the socket module their client
library (mqtt.clients.V311 / V5) sees with one whose sockets do a TLS handshake after
connect: the server name (SNI, and the name the server certificate is checked against)
is the host name given with --hostname, the client presents --cert/--key, and the server
certificate must chain to --cafile. Then it runs the suite's own main block (its option
parsing, host, port and topic settings) with unittest.main replaced by a runner that
gives every test a time limit and prints one line per test:

    RESULT <suite> <test name> <pass|fail|error|skip|timeout> <seconds>s

Usage:
    run_paho.py (3.1.1|5) --hostname=H --port=P --cafile=F --cert=F --key=F
                [--test-timeout=S] [test name ...]
    run_paho.py (3.1.1|5) --list      (prints "TEST <name>" for each of the suite's tests)

Exit status: 0 when the suite ran (whatever its results), 2 when it could not run.
Only the standard library is needed (CPython 3.8 or later).
"""

import argparse
import os
import runpy
import select
import signal
import socket
import ssl
import sys
import threading
import time
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PAHO = os.path.join(HERE, "paho", "interoperability")
SUITES = {"3.1.1": "client_test.py", "5": "client_test5.py"}


def tls_socket_module(context):
    """A stand-in for the socket module whose socket() makes TLS client sockets."""

    class TlsSocket:
        """A client socket that speaks TLS once connected.

        The suites' client reads in a background thread while the test thread writes;
        one OpenSSL connection must not be used by two threads at once, so reads and
        writes take turns under a lock, and a read waits for data (select) without
        holding it.
        """

        def __init__(self, family=socket.AF_INET, type=socket.SOCK_STREAM, *args):
            self._raw = socket.socket(family, type, *args)
            self._tls = None
            self._timeout = None
            self._lock = threading.Lock()

        def settimeout(self, value):
            self._timeout = value
            with self._lock:
                (self._tls or self._raw).settimeout(value)

        def gettimeout(self):
            return self._timeout

        def connect(self, address):
            host, port = address
            # The suites set a 0.5 s timeout before connecting: enough for TCP, tight
            # for a TLS handshake on a busy machine.
            self._raw.settimeout(max(self._timeout or 0, 10))
            self._raw.connect((host, port))
            self._tls = context.wrap_socket(self._raw, server_hostname=host)
            self._tls.settimeout(self._timeout)

        def _conn(self):
            if self._tls is None:
                raise OSError("not connected")
            return self._tls

        def send(self, data):
            with self._lock:
                self._conn().sendall(data)
            return len(data)

        def sendall(self, data):
            self.send(data)

        def recv(self, size):
            deadline = None if self._timeout is None else time.monotonic() + self._timeout
            while True:
                with self._lock:
                    tls = self._conn()
                    if tls.fileno() == -1:
                        raise OSError("socket closed")
                    tls.settimeout(0)
                    try:
                        return tls.recv(size)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                        return b""  # the peer closed: what a plain socket reports
                    finally:
                        if tls.fileno() != -1:
                            tls.settimeout(self._timeout)
                wait = 0.05
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise socket.timeout("timed out")
                    wait = min(wait, left)
                try:
                    select.select([tls], [], [], wait)
                except (ValueError, OSError):
                    pass  # closed meanwhile: the next turn says so

        def shutdown(self, how):
            # No TLS close_notify (SSLSocket.shutdown drops the TLS state first): an
            # abrupt end, as the suites mean by terminate().
            with self._lock:
                (self._tls or self._raw).shutdown(how)

        def close(self):
            with self._lock:
                (self._tls or self._raw).close()

        def fileno(self):
            return (self._tls or self._raw).fileno()

        def __repr__(self):
            # getPacket() looks for "[closed]" in the socket's text.
            return repr(self._tls or self._raw)

    shim = types.ModuleType("socket")
    shim.__dict__.update(socket.__dict__)
    shim.socket = TlsSocket
    return shim


class Timeout(Exception):
    pass


class Result(unittest.TextTestResult):
    """Prints one RESULT line per test and bounds each test's time (SIGALRM)."""

    def __init__(self, suite_name, limit, stream, descriptions, verbosity):
        super().__init__(stream, descriptions, verbosity)
        self.suite_name = suite_name
        self.limit = limit
        self.outcomes = {}

    def startTest(self, test):
        self.started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, self.limit)
        super().startTest(test)

    def stopTest(self, test):
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)
        name = test.id().rsplit(".", 1)[-1]
        outcome = self.outcomes.get(test.id(), "pass")
        took = time.monotonic() - self.started
        print("RESULT %s %s %s %.1fs" % (self.suite_name, name, outcome, took), flush=True)

    def addError(self, test, err):
        super().addError(test, err)
        self.outcomes[test.id()] = "timeout" if err[0] is Timeout else "error"

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.outcomes[test.id()] = "fail"

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.outcomes[test.id()] = "skip"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--list", action="store_true", help="list the tests, run none")
    parser.add_argument("--hostname", default="localhost")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--cafile")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--test-timeout", type=float, default=45.0)
    parser.add_argument("tests", nargs="*", help="test method names (default: all)")
    args = parser.parse_intermixed_args()
    if not args.list and not (args.cafile and args.cert and args.key):
        parser.error("--cafile, --cert and --key are needed to run tests")

    context = None
    if not args.list:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.cafile)
        context.load_cert_chain(args.cert, args.key)

    # mqtt/__init__.py also imports the suite's test brokers, which are not vendored:
    # the package is registered without running it; its subpackages load as usual.
    sys.path.insert(0, PAHO)
    package = types.ModuleType("mqtt")
    package.__path__ = [os.path.join(PAHO, "mqtt")]
    sys.modules["mqtt"] = package
    import mqtt.clients.V311.main as v311
    import mqtt.clients.V5.main as v5

    shim = tls_socket_module(context)
    v311.socket = shim
    v5.socket = shim

    def on_alarm(signum, frame):
        raise Timeout("test took longer than %.0f s" % args.test_timeout)

    signal.signal(signal.SIGALRM, on_alarm)

    ran = []

    def run_tests(*_args, **_kwargs):
        """Stands in for unittest.main() at the end of the suite's main block."""
        module = sys.modules["__main__"]
        loader = unittest.TestLoader()
        if args.list:
            for name in loader.getTestCaseNames(module.Test):
                print("TEST " + name)
            ran.append(None)
            return
        if args.tests:
            # In the suite's own order (unittest's: sorted by name): some tests
            # count on the ones before them (test_basic does not clear its callbacks).
            known = loader.getTestCaseNames(module.Test)
            unknown = sorted(set(args.tests) - set(known))
            if unknown:
                raise SystemExit("no such test in the suite: %s" % ", ".join(unknown))
            names = ["Test." + t for t in known if t in args.tests]
            suite = loader.loadTestsFromNames(names, module)
        else:
            suite = loader.loadTestsFromModule(module)
        runner = unittest.TextTestRunner(
            stream=sys.stderr,
            verbosity=2,
            resultclass=lambda *a: Result(args.suite, args.test_timeout, *a),
        )
        ran.append(runner.run(suite))

    unittest.main = run_tests
    sys.argv = [
        os.path.join(PAHO, SUITES[args.suite]),
        # Not "-h": the suites test `o in ("--help")`, a substring test that "-h"
        # passes. client_test5.py removes "-p" and its value from argv itself.
        "--hostname=" + args.hostname,
        "-p",
        str(args.port),
    ]
    runpy.run_path(sys.argv[0], run_name="__main__")
    if not ran:
        print("the suite's main block did not run its tests", file=sys.stderr)
        return 2
    result = ran[0]
    if result is None:
        return 0
    print(
        "SUMMARY %s ran=%d failures=%d errors=%d skipped=%d"
        % (args.suite, result.testsRun, len(result.failures), len(result.errors),
           len(result.skipped)),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
