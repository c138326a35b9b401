"""Invoice PDFs: valid structure, exact xref offsets, new attachment id whenever the invoice changes."""

from __future__ import annotations

import re

import requests

from halosandbox.pdf import render_text_pdf


def assert_valid_pdf(data: bytes) -> None:
    assert data.startswith(b"%PDF-1.4\n")
    assert data.rstrip().endswith(b"%%EOF")
    startxref = int(re.search(rb"startxref\n(\d+)\n%%EOF", data).group(1))
    assert data[startxref : startxref + 4] == b"xref"
    header = re.match(rb"xref\n0 (\d+)\n", data[startxref:])
    count = int(header.group(1))
    table = data[startxref + header.end() :].split(b"\n")[:count]
    assert table[0] == b"0000000000 65535 f "
    for number, row in enumerate(table[1:], start=1):
        offset = int(row[:10])
        assert row.endswith(b" 00000 n ")
        assert data[offset:].startswith(f"{number} 0 obj".encode()), number
    length = int(re.search(rb"/Length (\d+)", data).group(1))
    stream_start = data.index(b"stream\n") + len(b"stream\n")
    assert data[stream_start + length :].startswith(b"\nendstream")


def test_writer_escapes_and_stays_valid():
    data = render_text_pdf(["Invoice (1) \\ total", "Café €5"])
    assert_valid_pdf(data)
    assert b"Invoice \\(1\\) \\\\ total" in data


def test_attachment_is_a_valid_pdf_with_invoice_facts(halo_sandbox, halo_session):
    invoice = halo_session.get(f"{halo_sandbox.url}/api/Invoice/2").json()
    response = halo_session.get(f"{halo_sandbox.url}/api/Attachment/{invoice['pdf_attachment_id']}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/pdf"
    assert 'filename="Invoice-10002.pdf"' in response.headers["Content-Disposition"]
    assert_valid_pdf(response.content)
    for text in (b"Invoice 10002", b"Acme Dental Group", b"Total: 2372.54", b"Balance: 616.86"):
        assert text in response.content


def test_pdf_changes_with_the_invoice_and_old_id_is_gone(halo_sandbox, halo_session):
    url = halo_sandbox.url
    old = halo_session.get(f"{url}/api/Invoice/1").json()
    old_pdf = halo_session.get(f"{url}/api/Attachment/{old['pdf_attachment_id']}").content
    requests.post(f"{url}/_sandbox/invoices/1/payments", json={"amount": "50.00"}, timeout=10)
    new = halo_session.get(f"{url}/api/Invoice/1").json()
    assert new["pdf_attachment_id"] != old["pdf_attachment_id"]
    assert new["pdf_attachment_date_created"] > old["pdf_attachment_date_created"]
    assert halo_session.get(f"{url}/api/Attachment/{old['pdf_attachment_id']}").status_code == 404
    new_pdf = halo_session.get(f"{url}/api/Attachment/{new['pdf_attachment_id']}").content
    assert_valid_pdf(new_pdf)
    assert new_pdf != old_pdf and b"Balance: 8900.37" in new_pdf


def test_post_invoice_pdf_returns_attachment_id(halo_sandbox, halo_session):
    url = halo_sandbox.url
    invoice = halo_session.get(f"{url}/api/Invoice/3").json()
    response = halo_session.post(f"{url}/api/Invoice/PDF/3")
    assert response.status_code == 200 and response.json()["id"] == invoice["pdf_attachment_id"]
    assert halo_session.post(f"{url}/api/Invoice/PDF/999").status_code == 404


def test_deleted_invoice_has_no_pdf(halo_sandbox, halo_session):
    url = halo_sandbox.url
    attachment = halo_session.get(f"{url}/api/Invoice/3").json()["pdf_attachment_id"]
    halo_sandbox.store.delete_invoice(3)
    assert halo_session.get(f"{url}/api/Attachment/{attachment}").status_code == 404
