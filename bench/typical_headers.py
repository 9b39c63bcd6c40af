"""
Typical header sections as the gateway judges them at end of DATA (its own Received line first):
what ``smtp-source`` sends, a cron/``mail`` message, a Thunderbird message with 19 fields
(folded Received and DKIM-Signature, encoded-word From and Subject, ``"Name" <addr>`` lists).
Used by C{bench/bench_mail.py --typical}; the cost of judging these is paid for every message.
"""

RECEIVED = (b"Received: from vm ([127.0.0.1])\r\n\tby bench.localdomain (graphsmtp) with ESMTP id 4f3a9c2e1b7d\r\n"
            b"\t(tls=no);\r\n\tMon, 30 Nov 2026 04:30:43 +0000\r\n")
SMTP_SOURCE = RECEIVED + (b"From: <a@example.com>\r\nTo: <b@example.com>\r\n"
    b"Date: Mon, 30 Nov 2026 04:30:43 +0000 (UTC)\r\nMessage-Id: <1581.0003.0000@vm>\r\n\r\n")
CRON = RECEIVED + (b"Received: by host.example.org (Postfix, from userid 0)\r\n\tid 1A2B3C4D5E; Mon, 30 Nov 2026 04:00:01 +0000 (UTC)\r\n"
    b"From: root@host.example.org (Cron Daemon)\r\nTo: root@host.example.org\r\n"
    b"Subject: Cron <root@host> /usr/local/bin/backup.sh\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    b"X-Cron-Env: <SHELL=/bin/sh>\r\nX-Cron-Env: <HOME=/root>\r\nX-Cron-Env: <PATH=/usr/bin:/bin>\r\n"
    b"X-Cron-Env: <LOGNAME=root>\r\nMessage-Id: <20261130040001.1A2B3C4D5E@host.example.org>\r\n"
    b"Date: Mon, 30 Nov 2026 04:00:01 +0000 (UTC)\r\n\r\n")
THUNDERBIRD = RECEIVED + (
    b"Received: from mail.partner.example (mail.partner.example [203.0.113.7])\r\n\tby mx.corp.example (Postfix) with ESMTPS id 4Xy2Lm0Qz9z1\r\n\tfor <alice@corp.example>; Mon, 30 Nov 2026 04:10:11 +0000 (UTC)\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=partner.example;\r\n\ts=sel1; t=1795925411; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    b"\th=Message-ID:Date:MIME-Version:User-Agent:Subject:To:Cc:From:Content-Type;\r\n"
    b"\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgaGFzIHRoZSByaWdodCBzaGFwZQ==\r\n"
    b"\t YW5kIGEgc2Vjb25kIGxpbmUgb2YgYmFzZTY0IHRleHQgdG8gbWFrZSBpdCBsb25n\r\n"
    b"Message-ID: <5d1c2b3a-9e8f-4a7b-b6c5-d4e3f2a1b0c9@partner.example>\r\n"
    b"Date: Mon, 30 Nov 2026 05:10:09 +0100\r\nMIME-Version: 1.0\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0\r\n"
    b"Content-Language: en-US\r\n"
    b"To: Alice Example <alice@corp.example>, \"Bob Builder\" <bob@corp.example>,\r\n carol@corp.example\r\n"
    b"Cc: \"Smith, Dave\" <dave.smith@corp.example>, Eve <eve@partner.example>\r\n"
    b"From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg.mueller@partner.example>\r\n"
    b"Reply-To: Support <support@partner.example>\r\n"
    b"Subject: =?UTF-8?Q?Re=3A_Angebot_f=C3=BCr_n=C3=A4chste_Woche?=\r\n"
    b"Organization: Partner GmbH\r\n"
    b"References: <a1b2c3@partner.example> <d4e5f6@corp.example>\r\n"
    b"In-Reply-To: <d4e5f6@corp.example>\r\n"
    b"Content-Type: multipart/alternative;\r\n boundary=\"------------0A1B2C3D4E5F6A7B8C9D0E1F\"\r\n"
    b"X-Mozilla-Draft-Info: internal/draft; vcard=0; receipt=0; DSN=0; uuencode=0\r\n"
    b"ARC-Authentication-Results: i=1; mx.corp.example; dkim=pass header.d=partner.example\r\n\r\n")
SECTIONS = {"smtp-source": SMTP_SOURCE, "cron": CRON, "thunderbird": THUNDERBIRD}

__all__ = ["SECTIONS"]
