"""Held-out GUI cases, built on the dev set's page templates with different situations."""

from gui_items import obs, site


def _cases():
    out = []
    url, title, lines = site("shop")
    before = obs(url, title, lines)
    out.append(("click('103')", before, obs("http://shop.test/customer/account/logoutSuccess/",
                "You are signed out", ["\t[1] heading 'You are signed out'"]), 1, None))
    out.append(("click('121')", before, obs(url, title, lines, "Error: element is not "
                "visible"), -1, "not visible"))
    out.append(("fill('110', 'tea')", before, obs(url, title, [ln + (", value='tea'" if "[110]"
                in ln else "") for ln in lines]), 1, None))
    out.append(("click('134')", before, obs(url, title, [*lines, "\t[900] alert ''",
                "\t\t[901] StaticText 'The requested qty is not available'"]), -1,
                "qty is not available"))
    out.append(("click('150')", before, before, -1, "changed nothing"))
    out.append(("goto('http://shop.test/sales/order/history/')", before,
                obs("http://shop.test/sales/order/history/", "My Orders",
                    ["\t[1] heading 'My Orders'", "\t[2] table ''", "\t\t[3] row '000000170'"]),
                1, None))
    out.append(("goto('http://shop.test/admin')", before, obs("http://shop.test/admin",
                "403 Forbidden", ["\t[1] heading 'Forbidden'"]), -1, None))
    out.append(("scroll(0, 500)", before, obs(url, title, [*lines, "\t[990] link 'Newsletter'"]),
                0, None))
    url, title, lines = site("admin")
    before = obs(url, title, lines)
    out.append(("click('156')", before, obs("http://admin.test/admin/sales/order/",
                "Orders / Sales / Magento Admin", ["\t[1] heading 'Orders'"]), 1, None))
    out.append(("click('702')", before, obs(url, title, lines, "TimeoutError: Locator.click: "
                "Timeout 500ms exceeded."), -1, "Timeout"))
    out.append(("click('153')", before, obs(url, title, [ln.replace("10:41:07", "10:41:09")
                for ln in lines]), -1, "changed nothing"))
    out.append(("click('711')", before, before, -1, "changed nothing"))
    out.append(("send_msg_to_user('Sprite Yoga Strap')", before, before, 0, None))
    url, title, lines = site("code")
    before = obs(url, title, lines)
    out.append(("click('221')", before, obs("http://git.test/acme/app/-/issues",
                "Issues · acme / app · GitLab", ["\t[1] heading 'Issues'", "\t[2] link "
                "'Error when saving settings'"]), 1, None))
    out.append(("fill('210', 'parser')", before, before, -1, "changed nothing"))
    out.append(("press('210', 'Enter')", before, obs("http://git.test/search?search=parser",
                "Search · GitLab", ["\t[1] heading 'Search'", "\t[2] StaticText "
                "'We couldn't find any projects matching parser'"]), -1, None))
    url, title, lines = site("forum")
    before = obs(url, title, lines)
    out.append(("click('311')", before, obs("http://forum.test/submit", "Submit - Postmill",
                ["\t[1] textbox 'Title'", "\t[2] textbox 'Body'"]), 1, None))
    out.append(("click('302')", before, obs(url, title, [ln.replace("Online: 213",
                "Online: 209") for ln in lines]), -1, "changed nothing"))
    out.append(("click('340')", before, obs(url + "?next=2", title, [*lines[:5],
                "\t[420] article ''", "\t\t[421] link 'Classics worth rereading'"]), 1, None))
    out.append(("click('999')", before, obs(url, title, lines, "ValueError: Could not find "
                "element with bid \"999\""), -1, "Could not find element"))
    return out


CASES = _cases()
