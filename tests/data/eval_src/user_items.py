"""User-reply cases: (request, assistant answer, user reply, true sign, hint gist or None).

Written to cover cases (satisfaction, sarcasm, polite corrections, "thanks, but", rephrases,
neutral new requests, negation words in positive or neutral replies), not to match rules.
"""

W = "What's the weather in Oslo tomorrow?"
WA = "Tomorrow in Oslo: high of 50 F, light rain in the afternoon."
M = "Book a meeting with Dana for next week."
MA = "Done: meeting with Dana booked for Monday 10:00."
C = "Write a Python function that reverses a string."
CA = "def reverse(s):\n    return s[::-1]"
S = "Summarize the attached report in three bullet points."
SA = "- Revenue grew 12%\n- Costs were flat\n- Headcount rose to 210"
T = "Translate 'good morning' into German."
TA = "'Good morning' in German is 'Guten Morgen'."
Q = "How many days until Christmas?"
QA = "There are 30 days until Christmas."
SQL = "Give me a SQL query for the 10 newest orders."
SQLA = "SELECT * FROM orders ORDER BY created_at ASC LIMIT 10;"
F = "Find me a flight from Paris to Rome on Friday."
FA = "I found Air France AF1404, Thursday 9:15, 89 EUR."
R = "Can you fix the failing import in utils.py?"
RA = "I changed `from helpers import parse` to `from .helpers import parse`."
E = "Draft an email to the team about the offsite."
EA = "Hi team, the offsite is on June 3rd at the lake house. Bring sunscreen!"

CASES = [
    # --- satisfied / thanks: positive
    (W, WA, "Thanks!", 1, None),
    (W, WA, "thank you so much, that's helpful", 1, None),
    (M, MA, "Perfect, thanks.", 1, None),
    (C, CA, "That works, cheers.", 1, None),
    (C, CA, "Works like a charm 👍", 1, None),
    (S, SA, "Great job, that's exactly what I needed.", 1, None),
    (T, TA, "Danke! That's right.", 1, None),
    (Q, QA, "Awesome, thx", 1, None),
    (SQL, "SELECT * FROM orders ORDER BY created_at DESC LIMIT 10;", "lgtm", 1, None),
    (R, RA, "That fixed it, tests are green now.", 1, None),
    (E, EA, "Love it, sending it now.", 1, None),
    (F, "Air France AF1404, Friday 9:15, 89 EUR.", "Spot on, booking it.", 1, None),
    (W, WA, "Much appreciated.", 1, None),
    (C, CA, "you're a lifesaver", 1, None),
    (S, SA, "Looks good to me.", 1, None),
    (M, MA, "Sounds great, thank you!", 1, None),
    (T, TA, "Excellent.", 1, None),
    (Q, QA, "ty!", 1, None),
    (R, RA, "Nice, problem solved.", 1, None),
    (E, EA, "Nailed it.", 1, None),
    # negation words inside positive replies
    (W, WA, "No, that's all I needed, thanks!", 1, None),
    (M, MA, "Nothing else, thank you.", 1, None),
    (C, CA, "Not bad at all, thanks!", 1, None),
    (S, SA, "no worries about the formatting, this is great", 1, None),
    (E, EA, "I don't think anything is missing. Thanks!", 1, None),
    (R, RA, "No more errors, thank you!", 1, None),
    # thanks + next request (moves on)
    (W, WA, "Thanks! What about Bergen?", 1, None),
    (C, CA, "Great, now can you add type hints?", 1, None),
    (M, MA, "Perfect. Also invite Lee to it.", 1, None),
    (T, TA, "Thanks. And 'good night'?", 1, None),
    (S, SA, "ok cool, now do the same for the Q3 report", 1, None),
    (SQL, "SELECT * FROM orders ORDER BY created_at DESC LIMIT 10;",
     "Got it. Now only orders above 100 EUR.", 1, None),
    (Q, QA, "Okay, and how many until New Year?", 1, None),
    (F, "Air France AF1404, Friday 9:15, 89 EUR.", "Alright, book that one and find a hotel.",
     1, None),
    # --- sarcasm: negative
    (R, RA, "Oh great, now the whole build is broken.", -1, None),
    (C, CA, "Wow, thanks for nothing.", -1, None),
    (E, EA, "Perfect, exactly what I didn't ask for.", -1, None),
    (R, RA, "Brilliant, another crash.", -1, None),
    (C, CA, "Nice, you just made it even worse.", -1, None),
    (R, RA, "Fantastic. Now nothing loads at all.", -1, None),
    (SQL, SQLA, "Awesome, it's still wrong.", -1, None),
    (R, RA, "Great job breaking production.", -1, None),
    (W, WA, "Yeah right, rain in a drought.", -1, None),
    (C, CA, "Wonderful, it deleted my file.", -1, None),
    (M, MA, "Thanks a lot for booking it on a holiday...", -1, None),
    (S, SA, "Cool cool, so you just made up the numbers.", -1, None),
    # --- "thanks, but ...": negative with a hint
    (W, WA, "Thanks, but I need it in Celsius.", -1, "Celsius"),
    (M, MA, "Thank you! But it should be Tuesday, not Monday.", -1, "Tuesday, not Monday"),
    (SQL, SQLA, "Great, however the order should be descending.", -1, "order descending"),
    (C, CA, "Nice, but it has to run on Python 2.7.", -1, "Python 2.7"),
    (S, SA, "Thanks — though I asked for a numbered list.", -1, "numbered list"),
    (C, CA, "Looks good, but please use a loop instead of slicing.", -1,
     "use a loop instead of slicing"),
    (E, EA, "Cool, but make it more formal.", -1, "more formal"),
    (F, FA, "Thanks, but I said Friday.", -1, "Friday"),
    (T, TA, "Good, but I wanted the informal version.", -1, "informal version"),
    (Q, QA, "Thanks, but you forgot it's a leap year.", -1, "leap year"),
    (E, EA, "Perfect, except the date is June 4th.", -1, "June 4th"),
    (M, MA, "Great, only it needs to be in the afternoon.", -1, "afternoon"),
    # --- explicit corrections / complaints
    (M, MA, "That's wrong, I asked for Tuesday.", -1, "Tuesday"),
    (W, WA, "No, use the metric system.", -1, "metric system"),
    (C, CA, "This doesn't compile.", -1, None),
    (E, EA, "You forgot to mention the time.", -1, "mention the time"),
    (R, RA, "Nope, the file is in /etc, not /var.", -1, "/etc, not /var"),
    (Q, QA, "Wrong answer, it's 31 days.", -1, "31 days"),
    (F, FA, "That's not what I asked for.", -1, None),
    (S, SA, "You ignored my three-bullet limit.", -1, None),
    (SQL, SQLA, "This is useless.", -1, None),
    (R, RA, "Still doesn't work.", -1, None),
    (R, RA, "It crashes on startup now.", -1, None),
    (C, CA, "There is no such function, you made that up.", -1, None),
    (T, "'Good morning' in German is 'Gute Nacht'.",
     "That's incorrect, Gute Nacht means good night.", -1, None),
    (F, FA, "No no no, Rome, not Milan.", -1, "Rome, not Milan"),
    (SQL, SQLA, "Incorrect: use DESC so the newest come first.", -1, "use DESC"),
    (M, MA, "Why did you book it without asking me?", -1, None),
    (S, SA, "Are you sure? Revenue fell last year.", -1, None),
    (W, WA, "you misread the city, I said Oslo not Oulu", -1, "Oslo not Oulu"),
    (C, CA, "I told you to avoid slicing.", -1, "avoid slicing"),
    (E, EA, "not what I wanted at all, it should mention the budget", -1, "mention the budget"),
    # --- polite / soft corrections
    (M, MA, "Hmm, I think the meeting was supposed to be at 3pm, not 10.", -1, "3pm"),
    (F, FA, "Sorry, I meant the Berlin flight.", -1, "Berlin flight"),
    (SQL, SQLA, "Actually, it should be sorted by date, newest first.", -1, "newest first"),
    (Q, QA, "Could you double-check? That seems too low.", -1, None),
    (C, CA, "I was hoping for a recursive version.", -1, "recursive version"),
    (C, CA, "Small thing: the function name should be reverse_string.", -1, "reverse_string"),
    (Q, QA, "Wait, shouldn't that be 29?", -1, "29"),
    (R, RA, "Not quite — the module is called helper, singular.", -1, "helper, singular"),
    (F, FA, "Close, but the flight needs to leave after noon.", -1, "after noon"),
    (M, MA, "I think you misunderstood: I wanted to cancel it, not book it.", -1,
     "cancel it, not book it"),
    (E, EA, "Could you use a friendlier tone?", -1, "friendlier tone"),
    (W, WA, "Would you mind giving it in Celsius instead?", -1, "Celsius"),
    (S, SA, "The numbers look off compared to the PDF.", -1, None),
    (T, TA, "Hm, isn't it 'Moin' in the north?", -1, None),
    (SQL, SQLA, "Just a note: we use created_on, not created_at.", -1, "created_on"),
    (E, EA, "Please keep it under 50 words.", -1, "under 50 words"),
    # --- rephrases / repeats of the request
    ("Convert 5 miles to kilometers.", "5 miles is about 8 km... or 3.1 km? Let me check.",
     "Convert 5 miles to kilometers please.", -1, None),
    ("List the files in the repo sorted by size.", "Here are the files: a.py, b.py, c.md.",
     "I need the files in the repo sorted by size.", -1, None),
    ("What's the capital of Australia?", "Australia is a country in Oceania.",
     "what is the capital of australia", -1, None),
    (W, "Oslo is the capital of Norway.", "What will the weather be in Oslo tomorrow?", -1, None),
    ("Show me my unread emails from today.", "You have 3 emails.",
     "show me the unread emails from today", -1, None),
    ("How do I undo the last git commit?", "Git is a version control system.",
     "How can I undo my last git commit?", -1, None),
    ("Give me the total of invoices for March.", "There were 14 invoices in March.",
     "The total of the March invoices, please.", -1, None),
    ("Rename the variable x to count in main.py.", "Sure, variables should be descriptive.",
     "rename variable x to count in main.py", -1, None),
    ("Find a vegetarian restaurant near me.", "Here are 3 steakhouses nearby.",
     "I said vegetarian restaurant near me.", -1, "vegetarian"),
    ("When does the Louvre open on Sundays?", "The Louvre is in Paris.",
     "again: what time does the Louvre open on Sunday?", -1, None),
    # --- neutral new requests: no signal
    (W, WA, "Can you write a haiku about autumn?", 0, None),
    (C, CA, "How do I center a div in CSS?", 0, None),
    (S, SA, "What's the population of Peru?", 0, None),
    (M, MA, "Remind me to call mom at 6.", 0, None),
    (T, TA, "Is there a way to do this without regex?", 0, None),
    (R, RA, "What does 'wrong number of arguments' mean?", 0, None),
    (C, CA, "My other script says 'error: not found' - what's that about?", 0, None),
    (Q, QA, "No rush, but could you also look at the logs later?", 0, None),
    (E, EA, "Who is the CEO of Nvidia?", 0, None),
    (F, FA, "Explain how airline overbooking works.", 0, None),
    (SQL, "SELECT * FROM orders ORDER BY created_at DESC LIMIT 10;",
     "Different topic: what's a good name for a cat?", 0, None),
    (W, WA, "hm", 0, None),
    (S, SA, "ok", 0, None),
    (M, MA, "Set a timer for 10 minutes.", 0, None),
    (T, TA, "Tell me a joke.", 0, None),
    (C, CA, "What's the difference between a list and a tuple?", 0, None),
    (R, RA, "Why do relative imports fail in scripts in general?", 0, None),
    (Q, QA, "How far is the moon?", 0, None),
    (E, EA, "Schedule a dentist appointment next month.", 0, None),
    (F, "Air France AF1404, Friday 9:15, 89 EUR.",
     "I told my boss about the trip and she approved it. What's the weather in Rome?",
     0, None),
]
