"""The page's words in English and Simplified Chinese, chosen by the browser's language.

Labels, buttons and placeholders are gradio `I18nData` keys, translated in the browser by
gradio's i18n (`launch(i18n=page_i18n())`); a language without its own table reads English.
The model's answers are the model's; the app's own messages in the chat (errors, progress,
notes) are written in both languages where they arise (app/said.py), and shown in the language
the browser asks for (`language_of`, from the same preference gradio's i18n reads).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from app.said import CHINESE as CHINESE_LANGUAGE
from app.said import say

ENGLISH = MappingProxyType(
    {
        "chats": "Chats",
        "branch": "Continue in a new chat from here",
        "pages_one": "1 page",
        "pages_many": "{n} pages",
        "queued": "⏳ Queued: sent when this reply ends.",
        "unqueue": "Don't send",
        "new_chat": "New chat",
        "saved_here": "Saved in this browser",
        "rename_placeholder": "A new name for this chat",
        "rename": "Rename",
        "delete_chat": "Delete this chat",
        "confirm_delete": "Delete this chat? It cannot be undone.",
        "export_json": "Export JSON",
        "export_md": "Export Markdown (.md; a .zip with its files)",
        "import_json": "Import JSON",
        "chat": "Chat",
        "box_placeholder": "Ask about your images and videos (drop, paste or upload several)",
        "welcome": "**Ask about images, videos and PDFs.** Attach one or several (the paperclip "
        "in the box, or drag and drop, or paste), type a question, press Enter: the answer "
        "streams here. Or try an example below.",
        "send": "Send",
        "stop": "Stop",
        "regenerate": "Regenerate",
        "undo": "Undo",
        "clear": "Clear",
        "keys_help": (
            "Enter sends (while a reply streams: queues it) · Shift+Enter: a new line · "
            "Esc stops the reply · Alt+N: a new chat"
        ),
        "send_label": "Send the message",
        "stop_label": "Stop the reply (Esc)",
        "edit_drops_one": (
            "Saving this edit removes the 1 later turn (its question, reply and files). "
            "Enter saves; Cancel keeps everything."
        ),
        "edit_drops_many": (
            "Saving this edit removes the {n} later turns (questions, replies and files). "
            "Enter saves; Cancel keeps everything."
        ),
        "edit_save": "Save",
        "edit_cancel": "Cancel",
        "editing_note": (
            "✎ Editing an earlier question: its text and files are in the box (remove or add "
            "files there). Send answers it again in its place; the turns after it are removed."
        ),
        "cancel_edit": "Cancel editing",
        "camera": "Camera",
        "take_photo": "Take a photo",
        "record_clip": "Record a short clip",
        "examples": "Examples (click one to fill the box)",
        "settings": "Settings",
        "field.system_prompt": "System prompt",
        "field.max_new_tokens": "Max new tokens",
        "field.temperature": "Temperature (0 = greedy)",
        "field.top_p": "Top-p",
        "field.top_k": "Top-k (0 = off)",
        "field.repetition_penalty": "Repetition penalty",
        "field.seed": "Seed (-1 = random)",
        "field.max_pixels": "Max pixels per image (lower it if memory runs out)",
        "field.video_fps": "Video frames per second",
        "field.video_max_frames": "Max video frames",
        "field.enable_thinking": "Thinking (models whose template takes enable_thinking)",
    }
)
CHINESE = MappingProxyType(
    {
        "chats": "对话",
        "branch": "从这里在新对话中继续",
        "pages_one": "1 页",
        "pages_many": "{n} 页",
        "queued": "⏳ 已排队：这条回答结束后发送。",
        "unqueue": "不发送",
        "new_chat": "新对话",
        "saved_here": "保存在此浏览器中",
        "rename_placeholder": "为此对话起个新名字",
        "rename": "重命名",
        "delete_chat": "删除此对话",
        "confirm_delete": "删除此对话？此操作无法撤销。",
        "export_json": "导出 JSON",
        "export_md": "导出 Markdown（.md；有文件时为 .zip）",
        "import_json": "导入 JSON",
        "chat": "对话",
        "box_placeholder": "询问你的图片和视频（可拖放、粘贴或上传多个）",
        "welcome": "**就图片、视频和 PDF 提问。** 附上一个或多个文件"
        "（输入框里的回形针、拖放或粘贴），输入问题，按回车：回答会在这里逐字出现。"
        "也可以试试下面的示例。",
        "send": "发送",
        "stop": "停止",
        "regenerate": "重新生成",
        "undo": "撤销",
        "clear": "清空",
        "keys_help": (
            "Enter 发送（回答进行中则排队）· Shift+Enter 换行 · Esc 停止回答 · Alt+N 新对话"
        ),
        "send_label": "发送消息",
        "stop_label": "停止回答（Esc）",
        "edit_drops_one": (
            "保存此修改会删除后面的 1 轮对话（问题、回答和文件）。按 Enter 保存；取消则全部保留。"
        ),
        "edit_drops_many": (
            "保存此修改会删除后面的 {n} 轮对话（问题、回答和文件）。按 Enter 保存；取消则全部保留。"
        ),
        "edit_save": "保存",
        "edit_cancel": "取消",
        "editing_note": (
            "✎ 正在编辑之前的问题：它的文字和文件已放回输入框（可在那里删除或添加文件）。"
            "发送后将在原处重新回答，之后的对话会被删除。"
        ),
        "cancel_edit": "取消编辑",
        "camera": "相机",
        "take_photo": "拍照",
        "record_clip": "录制短视频",
        "examples": "示例（点击一个填入输入框）",
        "settings": "设置",
        "field.system_prompt": "系统提示词",
        "field.max_new_tokens": "最多生成的 token 数",
        "field.temperature": "温度（0 = 贪心）",
        "field.top_p": "核采样 Top-p",
        "field.top_k": "候选数 Top-k（0 = 关闭）",
        "field.repetition_penalty": "重复惩罚",
        "field.seed": "随机种子（-1 = 随机）",
        "field.max_pixels": "每张图片的最大像素数（内存不足时调低）",
        "field.video_fps": "视频每秒帧数",
        "field.video_max_frames": "视频最多帧数",
        "field.enable_thinking": "思考模式（模板支持 enable_thinking 的模型）",
    }
)
LANGUAGES = MappingProxyType({"en": ENGLISH, "zh-CN": CHINESE})
# gradio's own accessible names, tooltips and screen-reader notes that its i18n leaves in
# English (seen on the zh-CN page), in Chinese: the page's script puts them in place there
# (app/ui/page_code.py). A name that starts with a key ending in ": " keeps what follows.
GRADIO_IN_CHINESE = MappingProxyType(
    {
        "Click to upload or drop files": "点击上传或拖放文件",
        "Copy conversation": "复制对话",
        "Copy message": "复制消息",
        "Copied message": "已复制消息",
        "Empty value": "空值",
        "File upload": "文件上传",
        "Gradio footer navigation": "Gradio 页脚导航",
        "Multimedia input field": "多媒体输入框",
        "Reset to default value": "恢复默认值",
        "Upload a file": "上传文件",
        "Remove file": "移除文件",
        "Uploaded files": "已上传的文件",
        "File thumbnail": "文件缩略图",
        "chatbot conversation": "聊天对话",
        "Click to Access Webcam": "点击使用摄像头",
        "grant webcam access": "允许使用摄像头",
        "Fullscreen": "全屏",
        "Share": "分享",
        "Clear": "清除",
        "common.complete": "完成",
        "MultimodalTextbox": "输入框",
        "Textbox": "文本框",
        "user's message: ": "用户消息：",
        "bot's message: ": "助手消息：",
        "Liked": "已赞",  # gradio's names of a pressed thumb (an unpressed one it says: 赞, 踩)
        "Disliked": "已踩",
    }
)


# The example questions under the page's own example files (app/ui/layout.py), in both
# languages: the page shows and fills in the browser's (the trial's stay English: its seeing
# model reads English alone).
CHART_QUESTION = say("Which quarter sold the most, and how much?", "哪个季度卖得最多？卖了多少？")
RECEIPT_QUESTION = say(
    "Read the receipt: what is the total and what was bought?",
    "读一下这张收据：总额是多少，买了什么？",
)
BOXES_QUESTION = say("Outline every item on the receipt with a box.", "用方框标出收据上的每一项。")
CLIP_QUESTION = say("What happens in this clip, and when?", "这段视频里发生了什么？在什么时候？")
EXAMPLES_IN_CHINESE = MappingProxyType(
    {str(q): q.chinese for q in (CHART_QUESTION, RECEIPT_QUESTION, BOXES_QUESTION, CLIP_QUESTION)}
)


def example_in(text: str, language: str) -> str:
    """An example question in `language` (one the app has no words for, as it is)."""
    return EXAMPLES_IN_CHINESE.get(text, text) if language == CHINESE_LANGUAGE else text


def word(key: str) -> Any:
    """The page's word for `key`, translated in the browser (gradio's I18nData)."""
    from gradio.i18n import I18nData

    if key not in ENGLISH:
        raise KeyError(f"no English word for {key!r}")
    return I18nData(key)


def page_i18n() -> Any:
    """gradio's translator of every language above, for `launch(i18n=...)`."""
    import gradio as gr

    return gr.I18n(**{language: dict(table) for language, table in LANGUAGES.items()})


def browser_word(key: str) -> str:
    """A JavaScript expression of the word for `key` in the browser's language, for the page's
    own scripts (a confirm dialog), which gradio's i18n does not reach."""
    import json

    chinese = json.dumps(CHINESE.get(key, ENGLISH[key]), ensure_ascii=False)
    return (
        f"((navigator.language || '').toLowerCase().startsWith('zh') ? {chinese} : "
        f"{json.dumps(ENGLISH[key])})"
    )


def language_of(request: Any) -> str:
    """The language of the app's own messages for whoever made `request` (a gr.Request): their
    browser's, from its Accept-Language header; English for a script that sends none."""
    from app.said import language_of_header

    headers = getattr(request, "headers", None) or {}
    return language_of_header(headers.get("accept-language"))
