"""The entry-point plugin: ``blip2 langchain-tools`` shows the tools an agent gets, as the agent sees them."""

from __future__ import annotations

import json

import click

from blip2plugins import hookimpl


@click.command("langchain-tools")
@click.option("--conversation", is_flag=True, help="the variants that read the latest image of the conversation")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per tool (name, description, parameters)")
def langchain_tools(conversation: bool, as_json: bool) -> None:
    """List the BLIP-2 tools for LangChain agents with the argument schema an LLM sees (loads no model)."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from .toolkit import Blip2Toolkit

    kit = Blip2Toolkit(image_from="conversation" if conversation else "argument")
    for tool in kit.get_tools():
        spec = convert_to_openai_tool(tool)["function"]
        if as_json:
            click.echo(json.dumps(spec))
        else:
            params = ", ".join(spec.get("parameters", {}).get("properties", {}))
            click.echo(f"{spec['name']}({params}): {spec['description']}")


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(langchain_tools)
