"""Tool-result cases: (tool name, arguments JSON, result text, true sign, hint gist or None).

Errors, empty results and successes, including errors inside successful output (documents,
logs and JSON that mention errors) and partial failures.
"""

import json

CASES = [
    # --- plain errors
    ("get_weather", '{"city": "Oslo"}', "Error: missing required argument 'date'", -1, "date"),
    ("get_weather", '{"city": "Oslo", "date": "tmrw"}',
     "Error: invalid value for 'date': expected YYYY-MM-DD", -1, "YYYY-MM-DD"),
    ("get_wether", '{"city": "Oslo"}', "Unknown tool 'get_wether'. Did you mean 'get_weather'?",
     -1, "get_weather"),
    ("calendar_create", '{"title": "Sync"}',
     '{"error": {"code": 400, "message": "start_time is a required property"}}', -1,
     "start_time"),
    ("http_get", '{"url": "https://api.example.com/v2/users/99"}', "HTTP 404 Not Found", -1, None),
    ("http_get", '{"url": "https://api.example.com/v2/report"}',
     '{"status": 500, "detail": "Internal Server Error"}', -1, None),
    ("sql_query", '{"query": "SELEC * FROM users"}',
     'Error: syntax error at or near "SELEC" LINE 1: SELEC * FROM users', -1, None),
    ("sql_query", '{"query": "SELECT name FROM userz"}',
     'psycopg2.errors.UndefinedTable: relation "userz" does not exist', -1, None),
    ("read_file", '{"path": "/srv/app/config.yml"}',
     "FileNotFoundError: [Errno 2] No such file or directory: '/srv/app/config.yml'", -1, None),
    ("send_email", '{"to": "team"}',
     "ValidationError: 'to' must be a valid email address", -1, "valid email address"),
    ("search_web", '{"q": "nextstate daemon"}', "Request timed out after 30 seconds.", -1, None),
    ("translate", '{"text": "hi", "target": "xx"}',
     'Error: unsupported language "xx". Allowed values are: de, fr, es, it', -1,
     "de, fr, es, it"),
    ("create_ticket", '{"title": "Bug"}',
     "Traceback (most recent call last):\n  File \"tickets.py\", line 40, in create\n"
     "KeyError: 'priority'", -1, None),
    ("stripe_refund", '{"charge": "ch_123"}',
     '{"error": {"type": "invalid_request_error", "message": "No such charge: ch_123"}}', -1,
     None),
    ("geocode", '{"address": ""}', '{"ok": false, "reason": "empty address"}', -1, None),
    ("upload", '{"path": "big.iso"}', "413 Request Entity Too Large", -1, None),
    ("github_api", '{"endpoint": "/repos/x/y/pulls"}',
     '{"message": "API rate limit exceeded", "status": 403}', -1, None),
    ("run_query", '{"sql": "SELECT 1"}', "ERROR: permission denied for table payments", -1,
     None),
    ("fetch_stock", '{"symbol": "APPL"}',
     '{"status": "error", "message": "Unknown symbol APPL"}', -1, None),
    ("book_table", '{"restaurant": "Nopa", "time": "19:00", "people": 2}',
     "Failed: no availability at 19:00. Available times: 17:30, 21:15.", -1, "17:30, 21:15"),
    ("weather", '{"city": "Oslo", "units": "kelvin"}',
     "Invalid argument 'units': must be one of 'metric', 'imperial'", -1, "metric, imperial"),
    ("create_event", '{"date": "2024-02-30"}', "ValueError: day is out of range for month", -1,
     None),
    ("search_docs", '{"query": "auth"}', "Deadline exceeded while contacting the index.", -1,
     None),
    ("lookup_user", '{"id": "42"}', "Error 401: Unauthorized", -1, None),
    # --- partial failures / errors in the middle
    ("bulk_invite", '{"emails": ["a@x.io", "b@x", "c@x.io"]}',
     '{"invited": 2, "errors": [{"email": "b@x", "error": "invalid email"}]}', -1, None),
    ("calendar_batch", '{"events": 4}', "Created 3 of 4 events. 1 failed: invalid date format.",
     -1, None),
    # --- empty results
    ("search_web", '{"q": "asdkjh qwe zzx"}', "No results found.", -1, None),
    ("sql_query", '{"query": "SELECT * FROM orders WHERE id = -1"}', "[]", -1, None),
    ("search_products", '{"q": "blue mouse pad 9000"}', '{"results": [], "total": 0}', -1,
     None),
    ("find_contact", '{"name": "Zed"}', "null", -1, None),
    ("grep_repo", '{"pattern": "TODO_XYZ"}', "", -1, None),
    # --- successes, including error words inside successful output
    ("get_weather", '{"city": "Oslo", "date": "2024-06-01"}',
     '{"city": "Oslo", "temp_c": 14, "conditions": "light rain", "error": null}', 1, None),
    ("search_web", '{"q": "TypeError undefined is not a function"}',
     "1. Fixing 'TypeError: undefined is not a function' - Stack Overflow\n2. Common "
     "JavaScript errors explained - MDN", 1, None),
    ("read_file", '{"path": "app.log"}',
     "2024-05-01 10:00:01 INFO started\n2024-05-01 10:00:02 ERROR db timeout (retrying)\n"
     "2024-05-01 10:00:03 INFO connected", 1, None),
    ("search_docs", '{"query": "error codes"}',
     "## Error codes\nE001: Invalid token. Returned when the token has expired.\n"
     "E002: Missing required argument. Returned when a field is absent.", 1, None),
    ("sql_query", '{"query": "SELECT count(*) FROM errors"}', '[{"count": 17}]', 1, None),
    ("list_jobs", '{}', '{"jobs": [{"id": 1, "state": "failed"}, {"id": 2, "state": "ok"}], '
     '"errors": []}', 1, None),
    ("get_weather", '{"city": "Rome", "date": "2024-06-01"}',
     "Rome, 2024-06-01: 27 C, sunny, wind 10 km/h.", 1, None),
    ("calendar_create", '{"title": "Sync", "start_time": "2024-06-03T10:00"}',
     '{"id": "evt_81", "status": "confirmed", "htmlLink": "https://cal/evt_81"}', 1, None),
    ("send_email", '{"to": "dana@example.com"}', "Message sent (id 18f2a).", 1, None),
    ("translate", '{"text": "good morning", "target": "de"}', "Guten Morgen", 1, None),
    ("http_get", '{"url": "https://api.example.com/v2/users/7"}',
     '{"id": 7, "name": "Ada", "status": 200}', 1, None),
    ("book_table", '{"restaurant": "Nopa", "time": "21:15", "people": 2}',
     "Booked: Nopa, 21:15, 2 people. Confirmation NP-2231.", 1, None),
    ("fetch_stock", '{"symbol": "AAPL"}', '{"symbol": "AAPL", "price": 189.3}', 1, None),
    ("create_ticket", '{"title": "Login fails with error 500", "priority": "high"}',
     '{"id": "T-881", "title": "Login fails with error 500"}', 1, None),
    ("search_products", '{"q": "mouse"}',
     '{"results": [{"name": "Logi M185", "price": 14.99}], "total": 1}', 1, None),
    ("run_python", '{"code": "1+1"}', "2", 1, None),
    ("lookup_user", '{"id": "42"}', "User 42: Grace Hopper, admin, last login 2024-05-30.", 1,
     None),
    ("read_file", '{"path": "README.md"}',
     "# Project\n\nTroubleshooting: if you see `Error: EADDRINUSE`, stop the other server.",
     1, None),
    ("summarize_url", '{"url": "https://blog.example.com/post"}',
     "The post argues that most outages come from configuration errors, not code bugs.",
     1, None),
    ("geocode", '{"address": "Karl Johans gate 1, Oslo"}', '{"lat": 59.91, "lon": 10.75}', 1,
     None),
    ("get_exchange_rate", '{"from": "EUR", "to": "NOK"}',
     "Warning: rates are 15 minutes delayed.\nEUR/NOK = 11.62", 1, None),
    ("list_files", '{"dir": "/srv"}', "app/\nlogs/\nerror_pages/\nREADME.md", 1, None),
    # --- answers that are valid but empty-looking
    ("check_inbox", '{}', "No new messages.", 0, None),
    ("list_alerts", '{"severity": "critical"}', '{"alerts": []}', 0, None),
    ("get_calendar", '{"date": "2024-06-08"}', "No events on 2024-06-08.", 0, None),
    ("delete_file", '{"path": "tmp.txt"}', "", 0, None),
    ("set_reminder", '{"at": "18:00"}', '{"ok": true}', 1, None),
]


def as_result(text: str) -> str:
    """Tool results are text; JSON results stay JSON text."""
    return text if isinstance(text, str) else json.dumps(text)
