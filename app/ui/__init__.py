"""The Gradio app: the settings panel, the event handlers, the page. The only package importing
gradio; nothing in it needs a model."""
