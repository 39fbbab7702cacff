"""The referral slip (转诊单) as a one-page A4 PDF with the font embedded (R11).

The font ships in ``fonts/``: reportlab's built-in CJK fonts are not embedded,
and a viewer or printer without them shows empty boxes. reportlab subsets the
TrueType outlines it uses into the document.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime
from functools import cache
from io import BytesIO
from pathlib import Path

from reportlab.graphics import renderPDF
from reportlab.graphics.barcode.qr import QrCodeWidget
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from service.kit.clock import SHANGHAI, zh_instant
from service.kit.version import PRODUCT
from service.slip.service import PERIODS_ZH, TITLES_ZH, SlipContent, booked_for_zh, number_zh, zh_date

FONT_FILE = Path(__file__).resolve().parent / "fonts" / "wqy-microhei.ttc"
SANS = "SlipSans"  # WenQuanYi Micro Hei
MONO = "SlipMono"  # WenQuanYi Micro Hei Mono, for the reference and the code

PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN = 18 * mm
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
QR_SIZE = 38 * mm
INK = colors.HexColor("#1a1a1a")
MUTED = colors.HexColor("#555555")
RULE = colors.HexColor("#999999")
CANCELLED = colors.HexColor("#c0392b")

# reportlab keeps per-document font state on the shared font objects: one render at a time.
_render_lock = threading.Lock()
# Latin runs (references, times, phone numbers) wrap as words; every other character on its own.
_TOKENS = re.compile(r"[A-Za-z0-9@.:/_+*-]+|\s+|.", re.DOTALL)


@cache
def register_fonts() -> None:
    """Load the shipped font once per process."""
    pdfmetrics.registerFont(TTFont(SANS, str(FONT_FILE), subfontIndex=0))
    pdfmetrics.registerFont(TTFont(MONO, str(FONT_FILE), subfontIndex=1))


def wrap(text: str, font: str, size: float, width: float) -> list[str]:
    """Lines of ``text`` no wider than ``width``; Chinese breaks between any two characters."""
    lines: list[str] = []
    line = ""
    for token in _TOKENS.findall(text):
        if token == "\n":
            lines.append(line)
            line = ""
            continue
        if pdfmetrics.stringWidth(line + token, font, size) <= width or not line:
            line += token
            continue
        lines.append(line.rstrip())
        line = token.lstrip()
    if line:
        lines.append(line)
    return lines


class _Page:
    """A cursor down the page."""

    def __init__(self, canvas: Canvas) -> None:
        self.c = canvas
        self.y = PAGE_HEIGHT - MARGIN

    def text(self, x: float, text: str, *, size: float, font: str = SANS, color: colors.Color = INK) -> None:
        self.c.setFont(font, size)
        self.c.setFillColor(color)
        self.c.drawString(x, self.y, text)

    def paragraph(
        self, text: str, *, size: float, x: float = MARGIN, width: float = CONTENT_WIDTH, leading: float = 1.5
    ) -> None:
        for line in wrap(text, SANS, size, width):
            self.y -= size * leading
            self.text(x, line, size=size)

    def field(self, label: str, value: str, *, size: float = 12, font: str = SANS) -> None:
        """A labelled row; a long value wraps under itself."""
        label_width = 22 * mm
        lines = wrap(value, font, size, CONTENT_WIDTH - label_width) or [""]
        self.y -= size * 1.7
        self.text(MARGIN, label, size=size * 0.85, color=MUTED)
        for i, line in enumerate(lines):
            if i:
                self.y -= size * 1.35
            self.text(MARGIN + label_width, line, size=size, font=font)

    def rule(self, gap: float = 4 * mm) -> None:
        self.y -= gap
        self.c.setStrokeColor(RULE)
        self.c.setLineWidth(0.6)
        self.c.line(MARGIN, self.y, PAGE_WIDTH - MARGIN, self.y)

    def heading(self, text: str) -> None:
        self.y -= 9 * mm
        self.text(MARGIN, text, size=13)
        self.c.setStrokeColor(INK)
        self.c.setLineWidth(1)
        self.c.line(MARGIN, self.y - 2 * mm, MARGIN + pdfmetrics.stringWidth(text, SANS, 13), self.y - 2 * mm)
        self.y -= 1 * mm


def _qr(canvas: Canvas, value: str, x: float, y: float, size: float) -> None:
    widget = QrCodeWidget(value, barLevel="M")
    x0, y0, x1, y1 = widget.getBounds()
    # initialFontName: else the renderer selects Helvetica, which no PDF embeds.
    drawing = Drawing(
        size, size, transform=[size / (x1 - x0), 0, 0, size / (y1 - y0), 0, 0], initialFontName=SANS
    )
    drawing.add(widget)
    renderPDF.draw(drawing, canvas, x, y)


def _cancelled_mark(canvas: Canvas) -> None:
    canvas.saveState()
    canvas.setFillColor(CANCELLED)
    canvas.setFillAlpha(0.12)
    canvas.translate(PAGE_WIDTH / 2, PAGE_HEIGHT / 2)
    canvas.rotate(35)
    canvas.setFont(SANS, 120)
    canvas.drawCentredString(0, -40, "已取消")
    canvas.restoreState()


def pdf_date(when: datetime) -> str:
    """A PDF date string (ISO 32000 §7.9.4) in Beijing time: D:YYYYMMDDHHmmSS+08'00'."""
    local = when.astimezone(SHANGHAI)
    offset = local.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"D:{local:%Y%m%d%H%M%S}{sign}{abs(minutes) // 60:02d}'{abs(minutes) % 60:02d}'"


def render_slip(content: SlipContent, *, issued_at: datetime) -> bytes:
    """The slip as PDF bytes; ``issued_at`` comes from the injected clock."""
    register_fonts()
    notice = content.notice
    n = notice.notice
    buffer = BytesIO()
    with _render_lock:
        # invariant: reportlab reads no wall clock and derives the document ID from the content, so the
        # same slip at the same clock reading gives the same bytes. Its fixed 2000-01-01 date is replaced
        # below by the print time, from the injected clock like every other time the service writes.
        # initialFontName: otherwise reportlab lists Helvetica, a font no PDF embeds, in every page.
        canvas = Canvas(
            buffer,
            pagesize=A4,
            invariant=True,
            pageCompression=True,
            initialFontName=SANS,  # type: ignore[arg-type]  # the stubs say float; reportlab takes a name
        )
        created = pdf_date(issued_at)
        canvas.setDateFormatter(lambda *_: created)  # CreationDate and ModDate: the print time
        canvas.setTitle(f"转诊预约单 {notice.reference}")
        canvas.setSubject("基层医疗卫生机构转诊预约单")
        canvas.setAuthor(PRODUCT)
        canvas.setCreator(PRODUCT)
        canvas.setProducer(PRODUCT)
        cancelled = notice.status == "cancelled"
        if cancelled:
            _cancelled_mark(canvas)
        page = _Page(canvas)
        top = page.y

        page.y -= 8 * mm
        page.text(MARGIN, "转诊预约单", size=24)
        page.y -= 8 * mm
        page.text(MARGIN, "基层号源池预约 · 请携带本单按时就诊", size=10.5, color=MUTED)
        if not cancelled:
            qr_x = PAGE_WIDTH - MARGIN - QR_SIZE
            _qr(canvas, notice.reference, qr_x, top - QR_SIZE, QR_SIZE)
            canvas.setFont(MONO, 9)
            canvas.setFillColor(INK)
            canvas.drawCentredString(qr_x + QR_SIZE / 2, top - QR_SIZE - 4 * mm, notice.reference)
        if cancelled:
            page.y -= 14 * mm
            canvas.setFillColor(CANCELLED)
            canvas.rect(MARGIN, page.y - 3 * mm, CONTENT_WIDTH, 11 * mm, stroke=0, fill=1)
            cancelled_at = f"（{zh_instant(notice.cancelled_at)}取消）" if notice.cancelled_at else ""
            page.text(MARGIN + 4 * mm, f"本预约已取消，此单作废{cancelled_at}", size=14, color=colors.white)
        else:
            page.y = min(page.y, top - QR_SIZE - 6 * mm)
        page.rule(gap=3 * mm)

        page.heading("就诊信息")
        page.field("医院", n.hospital, size=16)
        page.field("科室", n.department, size=14)
        page.field("预约项目", booked_for_zh(n), size=13)
        if n.doctor is not None:
            page.field(
                "医生", f"{n.doctor}  {TITLES_ZH.get(n.doctor_title or '', n.doctor_title or '')}", size=13
            )
        page.field(
            "就诊时间",
            f"{n.service_date.year}年{zh_date(n.service_date)} {PERIODS_ZH.get(n.period, n.period)} "
            f"{n.time_band}  {'' if n.resource_kind == 'bed' else '第'}{number_zh(n)}",
            size=13,
        )
        if notice.location:
            page.field("就诊地点", notice.location, size=13)
        if n.hospital_address:
            postal = f"（邮编 {n.hospital_postal_code}）" if n.hospital_postal_code else ""
            page.field("医院地址", f"{n.hospital_address}{postal}", size=12)
        if n.hospital_phone:
            page.field("医院电话", n.hospital_phone, size=12)
        if not cancelled:
            page.field("请携带", n.what_to_bring, size=12)
        page.field("转诊编号", notice.reference, size=15, font=MONO)
        if notice.verification_code:
            page.field("验证码", notice.verification_code, size=15, font=MONO)
            page.text(MARGIN + 50 * mm, "电话取消时需提供，请妥善保管", size=9.5, color=MUTED)

        page.heading("患者")
        page.field("姓名", notice.resident_name_masked)
        page.field("身份证号", content.resident_id_on_slip, font=MONO)
        page.field("转出机构", notice.referring_institution)
        page.field("家庭医生", notice.referring_doctor)

        if not cancelled:
            page.heading("如何取消")
            page.paragraph(n.how_to_cancel, size=11.5)
            page.field("取消截止", zh_instant(n.cancel_deadline), size=11.5)
            page.field("取消热线", n.cancel_hotline, size=11.5)

            page.heading("爽约规则")
            page.paragraph(n.no_show_rule or "按就诊医院的号源管理规定处理。", size=11.5)

        issued = issued_at.astimezone(SHANGHAI)
        canvas.setFont(SANS, 8.5)
        canvas.setFillColor(MUTED)
        advice = "此单作废" if cancelled else "就诊时请向挂号窗口出示本单，转诊患者优先接诊"
        canvas.drawString(
            MARGIN,
            MARGIN - 6 * mm,
            f"打印时间 {issued:%Y-%m-%d %H:%M}（北京时间） · 转诊编号 {notice.reference} · {advice}",
        )
        canvas.showPage()
        canvas.save()
    return buffer.getvalue()
