"""Held-out user-reply cases, written after the rules were fixed on the dev set; measured once."""

P = "Plan a 3-day itinerary for Lisbon."
PA = "Day 1: Alfama and the castle. Day 2: Belem. Day 3: Sintra."
D = "Convert this date to ISO format: 03/04/2024"
DA = "2024-03-04"
G = "What's the best way to learn Go?"
GA = "Start with the Tour of Go, then build a small CLI tool."
B = "Write a bash one-liner to count lines in all .py files."
BA = "find . -name '*.py' | xargs wc -l"
N = "Give me a name for my bakery."
NA = "How about 'Rise & Shine Bakery'?"
X = "Export the sales table to CSV."
XA = "Exported sales.csv with 1,204 rows."

CASES = [
    (P, PA, "This is perfect, thank you!", 1, None),
    (D, DA, "yep that's it", 1, None),
    (G, GA, "Super helpful, thanks a bunch.", 1, None),
    (B, BA, "Worked first try. Thanks!", 1, None),
    (N, NA, "Love it!!", 1, None),
    (X, XA, "Great, got the file.", 1, None),
    (P, PA, "Amazing itinerary, I'll use it.", 1, None),
    (D, DA, "Correct, thanks.", 1, None),
    (G, GA, "Thanks, that's a good plan. What about books?", 1, None),
    (N, NA, "Haha nice one. Now a slogan?", 1, None),
    (B, BA, "Cool, and how do I exclude the venv folder?", 1, None),
    (X, XA, "Thank you. Can you also export customers?", 1, None),
    (P, PA, "Thanks, but Sintra is closed on Mondays and day 3 is a Monday.", -1,
     "Sintra closed on Mondays"),
    (D, DA, "Hmm, in my locale that's the 3rd of April, so 2024-04-03.", -1, "2024-04-03"),
    (B, BA, "That breaks on filenames with spaces.", -1, "filenames with spaces"),
    (N, NA, "Nah, too cheesy.", -1, None),
    (X, XA, "The file is empty.", -1, None),
    (G, GA, "You didn't answer my question.", -1, None),
    (P, PA, "I said 3 days, this looks like 2 and a half.", -1, "3 days"),
    (D, DA, "Wrong, the input is DD/MM/YYYY.", -1, "DD/MM/YYYY"),
    (B, BA, "Please use wc -l with find -exec instead of xargs.", -1, "find -exec"),
    (X, XA, "It should be semicolon-separated, not comma.", -1, "semicolon-separated"),
    (N, NA, "Can you make it sound more French?", -1, "more French"),
    (P, PA, "Oh fantastic, you sent me to Belem on the day it's closed.", -1, None),
    (G, GA, "Wow, so helpful, you just repeated the website.", -1, None),
    (X, XA, "Great, now the table is gone from the database.", -1, None),
    (B, BA, "Brilliant. Now my terminal is frozen.", -1, None),
    (N, NA, "Thanks I guess, but that name is already taken by the shop next door.", -1, None),
    (D, DA, "Actually I wanted it with the time as well.", -1, "with the time"),
    (G, GA, "I was looking for something free, not a paid course.", -1, "free"),
    (P, PA, "Sorry, I should have said: we don't like museums.", -1, "no museums"),
    (X, XA, "Could you include the header row?", -1, "include the header row"),
    (B, BA, "Doesn't count hidden directories though.", -1, "hidden directories"),
    (D, DA, "convert 03/04/2024 to ISO format", -1, None),
    (G, GA, "what is the best way to learn golang?", -1, None),
    (N, NA, "Give me a name for my bakery, please.", -1, None),
    (P, PA, "What's the weather in Lisbon in May?", 0, None),
    (D, DA, "How do I parse dates in JavaScript?", 0, None),
    (G, GA, "Is Rust harder than Go?", 0, None),
    (B, BA, "What does xargs do exactly?", 0, None),
    (N, NA, "Now I need a logo idea too.", 1, None),
    (X, XA, "Who has access to the sales table?", 0, None),
    (P, PA, "By the way, my flight lands at 9am.", 0, None),
    (D, DA, "What's the ISO week number for that date?", 0, None),
    (G, GA, "No, I've got no other questions, thanks!", 1, None),
    (B, BA, "The error 'argument list too long' - when does that happen?", 0, None),
    (N, NA, "ok", 0, None),
    (X, XA, "Thanks but no thanks, I'll do it in Excel.", -1, None),
    (P, PA, "That's right, Alfama first.", 1, None),
    (D, DA, "Not what I expected, but correct I guess.", 1, None),
]
