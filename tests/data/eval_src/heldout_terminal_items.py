"""Held-out terminal cases: (tool, command, output, previous output or None, sign, hint)."""

A = "==== 5 failed, 20 passed in 2.10s ===="
B = "FAILED tests/test_x.py::test_parse - ValueError\n==== 2 failed, 23 passed in 2.00s ===="
C = "==== 25 passed in 1.90s ===="

CASES = [
    ("bash", "pytest", A, None, -1, None),
    ("bash", "pytest", B, A, 1, None),
    ("bash", "pytest", C, B, 1, None),
    ("bash", "pytest", A, B, -1, None),
    ("bash", "pytest", C, None, 1, None),
    ("shell", "go vet ./...", "./main.go:14:2: unreachable code\nexit status 1", None, -1,
     None),
    ("bash", "python app.py", "Traceback (most recent call last):\n  File \"app.py\", line 9, "
     "in <module>\n    run()\nTypeError: run() missing 1 required positional argument: 'port'",
     None, -1, "missing 1 required positional argument port"),
    ("bash", "node index.js", "/app/index.js:3\nconst x = require('expresss');\n\nError: Cannot "
     "find module 'expresss'\nexit code: 1", None, -1, None),
    ("terminal", "rustc main.rs", "error[E0425]: cannot find value `y` in this scope\n --> "
     "main.rs:2:13", None, -1, "cannot find value y"),
    ("bash", "mvn test", "Tests run: 12, Failures: 1, Errors: 0, Skipped: 0\n[INFO] BUILD "
     "FAILURE", None, -1, None),
    ("bash", "npm run build", "> build\n> vite build\n\n✓ 42 modules transformed.\n"
     "dist/index.html  0.46 kB\n✓ built in 1.02s", None, 1, None),
    ("bash", "grep -c foo log.txt", "0\nexit code: 1", None, 0, None),
    ("bash", "test -f config.yml", '{"stdout": "", "stderr": "", "exit_code": 1}', None, 0,
     None),
    ("bash", "kubectl apply -f deploy.yml", "deployment.apps/web configured\nexit code: 0",
     None, 1, None),
    ("bash", "curl -sf https://api.example.com/health",
     "curl: (22) The requested URL returned error: 503\nexit code: 22", None, -1, None),
    ("bash", "pytest -q", "E   OSError: [Errno 101] Network is unreachable\n"
     "==== 1 failed, 99 passed in 9.0s ====", None, 0, None),
    ("bash", "ruff check .", "All checks passed!", None, 1, None),
    ("bash", "ruff check .", "src/a.py:3:1: F401 `os` imported but unused\nFound 1 error.\n"
     "exit code: 1", None, -1, None),
    ("bash", "mypy src", "src/a.py:10: error: Incompatible return value type (got \"int\", "
     "expected \"str\")\nFound 1 error in 1 file", None, -1, "Incompatible return value type"),
    ("bash", "cat notes.txt", "TODO: fix the error handling in parser\nexit code: 0", None, 1,
     None),
]
