"""GUI cases: BrowserGym-style observations before/after an action, with the true sign.

Four sites (shop, admin, code host, forum) times the cases a web agent meets: menus that
open, no-ops, timeouts and invalid targets, filled fields, navigation, error pages, form
errors, success toasts, noise-only changes (clocks, counters, rotating ads, focus), passive
actions, checkboxes and selects, modals, and raw DOM observations.
"""

import json


def obs(url, title, lines, error=""):
    tree = f"RootWebArea '{title}', focused\n" + "\n".join(lines)
    return json.dumps({"url": url, "title": title, "axtree": tree, "error": error})


def site(name):
    base = {
        "shop": ("http://shop.test/", "One Stop Market", [
            "\t[101] link 'My Account'", "\t[102] link 'My Wish List'", "\t[103] link 'Sign Out'",
            "\t[110] combobox 'Search', autocomplete='both', hasPopup='listbox', expanded=False",
            "\t[111] button 'Search'", "\t[120] menubar '', orientation='horizontal'",
            "\t\t[121] menuitem 'Beauty & Personal Care', hasPopup='menu'",
            "\t\t[122] menuitem 'Electronics', hasPopup='menu'",
            "\t\t[123] menuitem 'Home & Kitchen', hasPopup='menu'",
            "\t[130] heading 'Product Showcases'",
            "\t[131] link 'Pre-baked Gingerbread House Kit'", "\t\tStaticText '$19.99'",
            "\t[132] button 'Add to Cart'", "\t[133] link 'V8 +Energy Drink'",
            "\t\tStaticText '$14.47'", "\t[134] button 'Add to Cart'",
            "\t[140] StaticText 'Ad: Summer sale on garden tools'",
            "\t[150] contentinfo ''", "\t\tStaticText 'Copyright 2013-present'"]),
        "admin": ("http://admin.test/admin/dashboard/", "Dashboard / Magento Admin", [
            "\t[148] link 'Magento Admin Panel'", "\t[150] navigation ''",
            "\t\t[153] link 'DASHBOARD'", "\t\t[156] link 'SALES'", "\t\t[189] link 'CATALOG'",
            "\t\t[207] link 'CUSTOMERS'", "\t\t[339] link 'REPORTS'",
            "\t[700] heading 'Dashboard'", "\t[701] StaticText 'Last updated: 10:41:07'",
            "\t[702] button 'Reload Data'", "\t[710] tablist ''",
            "\t\t[711] tab 'Bestsellers', selected=True", "\t\t[712] tab 'Most Viewed Products',"
            " selected=False", "\t[720] table ''", "\t\t[721] row 'Sprite Yoga Strap 6 foot "
            "$14.00 6'", "\t\t[722] row 'Quest Lumaflex Band $19.00 6'"]),
        "code": ("http://git.test/acme/app", "acme / app · GitLab", [
            "\t[200] link 'Projects'", "\t[201] link 'Groups'", "\t[210] textbox 'Search GitLab'",
            "\t[220] heading 'app'", "\t[221] link 'Issues 12'", "\t[222] link 'Merge requests 3'",
            "\t[223] link 'Repository'", "\t[224] button 'Clone', expanded=False",
            "\t[230] link 'main'", "\t[231] StaticText 'Last commit 5 minutes ago'",
            "\t[240] table 'Files'", "\t\t[241] row 'src'", "\t\t[242] row 'README.md'",
            "\t[250] button 'Star'", "\t[251] StaticText '37'"]),
        "forum": ("http://forum.test/f/books", "books - Postmill", [
            "\t[300] link 'Postmill'", "\t[301] link 'Forums'", "\t[302] link 'Log in'",
            "\t[310] heading '/f/books'", "\t[311] link 'Submit'",
            "\t[320] article ''", "\t\t[321] link 'What are you reading this week?'",
            "\t\t[322] StaticText '131 comments'", "\t\t[323] button 'Upvote'",
            "\t\t[324] StaticText '54'", "\t[330] article ''",
            "\t\t[331] link 'Best sci-fi of the decade'", "\t\t[332] StaticText '88 comments'",
            "\t[340] link 'More'", "\t[350] StaticText 'Online: 213'"]),
    }[name]
    return base


def act(action):
    return action


def cases():
    out = []
    for name in ("shop", "admin", "code", "forum"):
        url, title, lines = site(name)
        before = obs(url, title, lines)
        first_bid = lines[1].split("]")[0].strip("\t[")
        # menu or widget that opens: the target changes and new items appear
        opened = [ln.replace("expanded=False", "expanded=True") for ln in lines]
        target = {"shop": "122", "admin": "339", "code": "224", "forum": "340"}[name]
        if name == "shop":
            opened = [ln + (", expanded=True" if "[122]" in ln else "") for ln in lines] + [
                "\t\t\t[160] menuitem 'Computers & Accessories'",
                "\t\t\t[161] menuitem 'Cell Phones'"]
        elif name == "admin":
            opened = [ln + (", focused" if "[339]" in ln else "") for ln in lines] + [
                "\t\t\t[342] strong 'Reports'", "\t\t\t[350] link 'Orders'",
                "\t\t\t[351] link 'Tax'", "\t\t\t[352] link 'Invoiced'"]
        elif name == "code":
            opened += ["\t\t[260] textbox 'Clone with SSH' value='git@git.test:acme/app.git'",
                       "\t\t[261] button 'Copy URL'"]
        else:
            opened = [ln for ln in lines if "[320]" not in ln and "[321]" not in ln] + [
                "\t[360] article ''", "\t\t[361] link 'Reading challenge 2024'"]
        out.append((f"click('{target}')", before, obs(url, title, opened), 1, None))
        # no-op click
        out.append((f"click('{first_bid}')", before, before, -1, "changed nothing"))
        # timeout
        out.append((f"click('{target}')", before, obs(url, title, lines,
                    "TimeoutError: Locator.click: Timeout 500ms exceeded.\nCall log:\n  - "
                    "waiting for get_by_test_id(\"" + target + "\")"), -1, "Timeout"))
        # invalid target
        out.append(("click('9999')", before, obs(url, title, lines,
                    "ValueError: Could not find element with bid \"9999\""), -1,
                    "Could not find element"))
        # navigation by click
        new_url = url.rstrip("/") + "/detail/1"
        out.append((f"click('{target}')", before,
                    obs(new_url, "Detail - " + title, ["\t[900] heading 'Details'",
                                                       "\t[901] StaticText 'Item 1'"]), 1, None))
        # error page after goto
        out.append((f"goto('{url}nope')", before,
                    obs(url + "nope", "404 Not Found", ["\t[1] heading '404 Not Found'",
                        "\t[2] StaticText 'The page you requested was not found.'"]), -1, None))
        # noise only: clock / counter / focus changes
        noisy = [ln.replace("10:41:07", "10:41:12").replace("'Online: 213'", "'Online: 215'")
                 .replace("5 minutes ago", "6 minutes ago").replace("'$19.99'", "'$19.99'")
                 for ln in lines]
        noisy = [ln + ", focused" if i == 1 else ln for i, ln in enumerate(noisy)]
        out.append((f"click('{first_bid}')", before, obs(url, title, noisy), -1,
                    "changed nothing"))
        # passive actions
        out.append(("scroll(0, 300)", before, before, 0, None))
        out.append(("send_msg_to_user('Done')", before, before, 0, None))
        # form error appears
        out.append((f"click('{target}')", before, obs(url, title, [*lines,
                    "\t[800] alert ''", "\t\t[801] StaticText 'Please enter a valid email "
                    "address.'"]), -1, "valid email address"))
        # success toast
        out.append((f"click('{target}')", before, obs(url, title, [*lines,
                    "\t[810] status ''", "\t\t[811] StaticText 'Your changes have been saved.'"]),
                    1, None))
    return out


def extra_cases():
    url, title, lines = site("shop")
    before = obs(url, title, lines)
    filled = [ln.replace("expanded=False", "expanded=False, value='blue mouse'")
              if "[110]" in ln else ln for ln in lines]
    cart = [*lines, "\t[812] alert ''",
            "\t\t[813] StaticText 'You added Pre-baked Gingerbread House Kit to your shopping "
            "cart.'"]
    rotated = [ln.replace("Summer sale on garden tools", "Free shipping on orders over $50")
               for ln in lines]
    login_url = "http://shop.test/customer/account/login/"
    login = ["\t[400] textbox 'Email'", "\t[401] textbox 'Password'", "\t[402] button 'Sign In'"]
    login_before = obs(login_url, "Customer Login", login)
    admin_url, admin_title, admin_lines = site("admin")
    admin_before = obs(admin_url, admin_title, admin_lines)
    tab = [ln.replace("selected=True", "selected=False") if "[711]" in ln else
           ln.replace("selected=False", "selected=True") if "[712]" in ln else ln
           for ln in admin_lines]
    tab = [ln for ln in tab if "[721]" not in ln and "[722]" not in ln] + [
        "\t\t[731] row 'Overnight Duffle $45.00 10'"]
    with_banner = [*lines, "\t[870] alert ''", "\t\t[871] StaticText 'Error: your session expired"
                   " earlier'"]
    dom_before = ("<html><body><form id='f'><input id='q' name='q' value=''>"
                  "\n<button id='go'>Search</button></form>\n<ul id='r'></ul></body></html>")
    dom_after = ("<html><body><form id='f'><input id='q' name='q' value='mouse'>"
                 "\n<button id='go'>Search</button></form>\n<ul id='r'>\n<li>Logi M185</li>\n"
                 "<li>Logi M705</li>\n</ul></body></html>")
    return [
        ("fill('110', 'blue mouse')", before, obs(url, title, filled), 1, None),
        ("fill('110', 'blue mouse')", before, before, -1, "changed nothing"),
        ("click('132')", before, obs(url, title, cart), 1, None),
        ("click('131')", before, obs(url, title, rotated), -1, "changed nothing"),
        ("press('110', 'Enter')", before, obs("http://shop.test/catalogsearch/result/?q=mouse",
         "Search results for: 'mouse'", ["\t[500] heading \"Search results for: 'mouse'\"",
                                          "\t[501] link 'Logi M185'"]), 1, None),
        ("fill('400', 'ada@example.com')", login_before, obs(login_url, "Customer Login",
         [ln.replace("'Email'", "'Email' value='ada@example.com'") for ln in login]), 1, None),
        ("click('402')", login_before, obs(login_url, "Customer Login", [*login,
         "\t[410] alert ''", "\t\t[411] StaticText 'The account sign-in was incorrect or your "
         "account is disabled temporarily. Please wait and try again later.'"]), -1,
         "sign-in was incorrect"),
        ("click('712')", admin_before, obs(admin_url, admin_title, tab), 1, None),
        ("select_option('757', '50')", obs(admin_url, admin_title, [*admin_lines,
         "\t[757] combobox 'Per page', value='20'"]), obs(admin_url, admin_title, [*admin_lines,
         "\t[757] combobox 'Per page', value='50'", "\t\t[740] row 'Hero Hoodie $54.00 3'"]), 1,
         None),
        ("check('600')", obs(url, title, [*lines, "\t[600] checkbox 'Remember me', "
         "checked='false'"]), obs(url, title, [*lines, "\t[600] checkbox 'Remember me', "
         "checked='true'"]), 1, None),
        ("click('702')", admin_before, obs(admin_url, admin_title, [ln.replace("10:41:07",
         "10:42:30") for ln in admin_lines]), 1, None),
        ("click('101')", obs(url, title, with_banner), obs("http://shop.test/customer/account/",
         "My Account", ["\t[600] heading 'My Account'", "\t[601] StaticText 'Contact "
         "Information'"]), 1, None),
        ("go_back()", obs("http://shop.test/detail/9", "Detail", ["\t[1] heading 'Detail'"]),
         before, 1, None),
        ("hover('131')", before, before, 0, None),
        ("noop()", before, before, 0, None),
        ("click('go')", dom_before, dom_after, 1, None),
        ("click('go')", dom_before, dom_before, -1, "changed nothing"),
        ("click('250')", obs(*site("code")[:2], site("code")[2]),
         obs(*site("code")[:2], [ln.replace("'Star'", "'Unstar'").replace("'37'", "'38'")
                                 for ln in site("code")[2]]), 1, None),
        ("click('323')", obs(*site("forum")[:2], site("forum")[2]),
         obs(*site("forum")[:2], [ln.replace("'54'", "'55'") for ln in site("forum")[2]]),
         1, None),
    ]


CASES = cases() + extra_cases()
