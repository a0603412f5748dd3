"""Terminal / SWE cases: (tool, command, output, previous test output or None, sign, hint).

Test runs with and without an earlier run to compare, failures unrelated to the change
(network, pre-existing), compiler errors, tracebacks, benign non-zero exits, noisy successes.
"""

PY_FAIL_2 = ("============================= test session starts ==============================\n"
             "collected 12 items\n\ntests/test_api.py ..F.......F.\n\n"
             "=========================== short test summary info ============================\n"
             "FAILED tests/test_api.py::test_create_user - AssertionError: 201 != 400\n"
             "FAILED tests/test_api.py::test_delete_user - KeyError: 'id'\n"
             "========================= 2 failed, 10 passed in 0.84s =========================")
PY_FAIL_1 = ("collected 12 items\n\ntests/test_api.py ..........F.\n\n"
             "FAILED tests/test_api.py::test_delete_user - KeyError: 'id'\n"
             "========================= 1 failed, 11 passed in 0.80s =========================")
PY_PASS = ("collected 12 items\n\ntests/test_api.py ............\n\n"
           "============================== 12 passed in 0.79s ==============================")
PY_FAIL_3 = ("collected 12 items\n\ntests/test_api.py F.F.......F.\n\n"
             "FAILED tests/test_api.py::test_list_users - TypeError: 'NoneType' object is not "
             "subscriptable\nFAILED tests/test_api.py::test_create_user - AssertionError\n"
             "FAILED tests/test_api.py::test_delete_user - KeyError: 'id'\n"
             "========================= 3 failed, 9 passed in 0.91s ==========================")
PY_NET = ("collected 40 items\n\ntests/test_sync.py ........................F...............\n"
          "E   requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.github.com', "
          "port=443): Max retries exceeded with url: /repos (Caused by NewConnectionError("
          "'Failed to establish a new connection: [Errno -3] Temporary failure in name "
          "resolution'))\nFAILED tests/test_sync.py::test_fetch_remote - requests.exceptions."
          "ConnectionError\n==================== 1 failed, 39 passed in 3.20s ====================")
GO_FAIL = ("=== RUN   TestParse\n--- PASS: TestParse (0.00s)\n=== RUN   TestEval\n"
           "    eval_test.go:31: got 4, want 5\n--- FAIL: TestEval (0.00s)\nFAIL\n"
           "FAIL\tgithub.com/acme/calc\t0.012s")
GO_PASS = ("=== RUN   TestParse\n--- PASS: TestParse (0.00s)\n=== RUN   TestEval\n"
           "--- PASS: TestEval (0.00s)\nPASS\nok  \tgithub.com/acme/calc\t0.011s")
CARGO_FAIL = ("running 5 tests\ntest tests::add ... ok\ntest tests::sub ... ok\n"
              "test tests::div_zero ... FAILED\ntest tests::mul ... ok\ntest tests::neg ... ok\n\n"
              "failures:\n\n---- tests::div_zero stdout ----\nthread 'tests::div_zero' panicked "
              "at 'attempt to divide by zero', src/lib.rs:20:5\n\n"
              "test result: FAILED. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out")
CARGO_PASS = ("running 5 tests\ntest tests::add ... ok\ntest tests::sub ... ok\n"
              "test tests::div_zero ... ok\ntest tests::mul ... ok\ntest tests::neg ... ok\n\n"
              "test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out")
JEST_FAIL = (" FAIL  src/cart.test.js\n  ● cart › applies discount\n\n    expect(received)."
             "toBe(expected)\n\n    Expected: 90\n    Received: 100\n\n"
             "Tests:       1 failed, 7 passed, 8 total\nTime:        1.2 s")
JEST_PASS = (" PASS  src/cart.test.js\n PASS  src/user.test.js\n\n"
             "Tests:       8 passed, 8 total\nSnapshots:   0 total\nTime:        1.1 s")

CASES = [
    # --- test runs without an earlier run
    ("bash", "pytest -q", PY_FAIL_2, None, -1, "test_create_user"),
    ("bash", "pytest -q", PY_PASS, None, 1, None),
    ("bash", "go test ./...", GO_FAIL, None, -1, "TestEval"),
    ("bash", "go test ./...", GO_PASS, None, 1, None),
    ("terminal", "cargo test", CARGO_FAIL, None, -1, "div_zero"),
    ("terminal", "cargo test", CARGO_PASS, None, 1, None),
    ("run_command", "npx jest", JEST_FAIL, None, -1, "applies discount"),
    ("run_command", "npx jest", JEST_PASS, None, 1, None),
    ("bash", "python -m unittest", "..F..\n=====\nFAIL: test_total (test_cart.CartTest)\n"
     "AssertionError: 90 != 100\n----\nRan 5 tests in 0.003s\n\nFAILED (failures=1)", None, -1,
     "test_total"),
    ("bash", "python -m unittest", ".....\n----------------------------------------------------"
     "------------------\nRan 5 tests in 0.002s\n\nOK", None, 1, None),
    ("shell", "npm test", "  cart\n    ✓ adds items\n    ✓ removes items\n\n  2 passing (12ms)",
     None, 1, None),
    # --- compared with the previous run
    ("bash", "pytest -q", PY_FAIL_1, PY_FAIL_2, 1, None),
    ("bash", "pytest -q", PY_PASS, PY_FAIL_1, 1, None),
    ("bash", "pytest -q", PY_FAIL_3, PY_FAIL_1, -1, "test_list_users"),
    ("bash", "pytest -q", PY_FAIL_2, PY_PASS, -1, "test_create_user"),
    ("bash", "go test ./...", GO_PASS, GO_FAIL, 1, None),
    ("terminal", "cargo test", CARGO_PASS, CARGO_FAIL, 1, None),
    ("run_command", "npx jest", JEST_PASS, JEST_FAIL, 1, None),
    ("terminal", "cargo test", CARGO_FAIL, CARGO_PASS, -1, "div_zero"),
    # --- failures that are not the action's fault
    ("bash", "pytest -q", PY_NET, None, 0, None),
    ("bash", "pytest -q", PY_FAIL_1, PY_FAIL_1, 0, None),
    ("bash", "pytest tests/test_api.py -q", PY_NET.replace("40 items", "40 items (cached)"),
     PY_PASS, 0, None),
    # --- compiler errors
    ("bash", "gcc -o app main.c",
     "main.c: In function 'main':\nmain.c:12:5: error: 'count' undeclared (first use in this "
     "function)\n   12 |     count++;\n      |     ^~~~~", None, -1, "count undeclared"),
    ("bash", "cargo build",
     "   Compiling calc v0.1.0\nerror[E0308]: mismatched types\n --> src/lib.rs:8:20\n  |\n8 "
     "|     let x: i32 = \"5\";\n  |            ---   ^^^ expected `i32`, found `&str`\n\n"
     "error: could not compile `calc` due to previous error", None, -1, "mismatched types"),
    ("bash", "npx tsc --noEmit",
     "src/cart.ts(14,7): error TS2322: Type 'string' is not assignable to type 'number'.",
     None, -1, "not assignable to type number"),
    ("bash", "go build ./...",
     "# github.com/acme/calc\n./eval.go:22:9: undefined: tokenize", None, -1,
     "undefined tokenize"),
    ("bash", "javac Main.java",
     "Main.java:5: error: cannot find symbol\n    Strin name = \"x\";\n    ^\n  symbol:   "
     "class Strin\n1 error", None, -1, "cannot find symbol"),
    # --- tracebacks and failing commands
    ("bash", "python manage.py migrate",
     "Traceback (most recent call last):\n  File \"manage.py\", line 22, in <module>\n"
     "    main()\n  File \"/app/db.py\", line 8, in connect\n    raise ImproperlyConfigured("
     "'DATABASE_URL not set')\ndjango.core.exceptions.ImproperlyConfigured: DATABASE_URL not set",
     None, -1, "DATABASE_URL not set"),
    ("bash", "python script.py",
     "Traceback (most recent call last):\n  File \"script.py\", line 3, in <module>\n"
     "    import pandas as pd\nModuleNotFoundError: No module named 'pandas'", None, -1,
     "No module named pandas"),
    ("bash", "pyhton script.py", "bash: pyhton: command not found\n[exit code: 127]", None, -1,
     "pyhton command not found"),
    ("shell", "cat /etc/shadow", "cat: /etc/shadow: Permission denied\nexit code: 1", None, -1,
     "Permission denied"),
    ("bash", "./run_server", "Segmentation fault (core dumped)\nexit code: 139", None, -1, None),
    ("execute", "npm install",
     "npm ERR! code ERESOLVE\nnpm ERR! ERESOLVE unable to resolve dependency tree\n"
     "npm ERR! Found: react@18.2.0\nexit code: 1", None, -1, None),
    ("bash", "make", '{"stdout": "cc -c util.c\\n", "stderr": "make: *** [Makefile:9: app] '
     'Error 1\\n", "exit_code": 2}', None, -1, None),
    ("bash", "timeout 10 ./load_test.sh", "starting 100 workers...\nexit code: 124", None, -1,
     None),
    ("bash", "git push origin main",
     "To github.com:acme/app.git\n ! [rejected]        main -> main (fetch first)\nerror: "
     "failed to push some refs to 'github.com:acme/app.git'\nexit code: 1", None, -1,
     "failed to push"),
    # --- benign non-zero exits and successes
    ("bash", "grep -rn 'TODO_REMOVE' src/", '{"stdout": "", "stderr": "", "exit_code": 1}',
     None, 0, None),
    ("bash", "diff old.txt new.txt", "3c3\n< alpha\n---\n> beta\nexit code: 1", None, 0, None),
    ("bash", "ls -la", "total 12\ndrwxr-xr-x 3 dev dev 4096 .\n-rw-r--r-- 1 dev dev  220 "
     "main.py\nexit code: 0", None, 1, None),
    ("bash", "pip install requests", "Successfully installed requests-2.32.3 urllib3-2.2.1\n"
     "exit code: 0", None, 1, None),
    ("bash", "git status", '{"stdout": "On branch main\\nnothing to commit, working tree '
     'clean\\n", "stderr": "", "exit_code": 0}', None, 1, None),
    ("bash", "python -c 'print(1)'", '{"stdout": "1\\n", "stderr": "", "exit_code": 0}', None,
     1, None),
    ("bash", "pytest -q tests/test_log.py",
     "tests/test_log.py::test_error_is_logged PASSED\n captured: ERROR: disk full (expected)\n"
     "============================== 1 passed in 0.05s ===============================", None,
     1, None),
    ("bash", "cat ci.log",
     "step 3: FAILED tests/test_api.py::test_create_user\nstep 4: retry\nstep 5: ok", None,
     0, None),
    ("bash", "cargo build", "warning: unused variable: `x`\n --> src/main.rs:3:9\n\n"
     "    Finished dev [unoptimized + debuginfo] target(s) in 0.52s\nexit code: 0", None, 1,
     None),
    ("bash", "echo done", "done", None, 0, None),
    ("bash", "sed -i 's/foo/bar/' config.ini", '{"stdout": "", "stderr": "", "exit_code": 0}',
     None, 1, None),
    ("bash", "docker build -t app .",
     "Step 4/9 : RUN pip install -r requirements.txt\nERROR: Could not find a version that "
     "satisfies the requirement torch==9.9\nexit code: 1", None, -1, None),
]
