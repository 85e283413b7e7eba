#!/usr/bin/env python3
"""Expected DeepSeek-V4 prompt strings for kiln's chat encoding tests.

    python3 tools/tokenizer_chat_reference.py REFERENCE_DIR OUT.json

REFERENCE_DIR holds DeepSeek's own `encoding_dsv4.py` (from the DeepSeek-V4 model repo,
encoding/encoding_dsv4.py; it is not part of kiln and is not committed). This script
builds a fixed set of conversations, runs DeepSeek's encode_messages and
parse_message_from_completion_text on them and writes inputs + outputs (or the
exception type where the reference refuses the input) to OUT.json, which
tests/tokenizer/chat_encoding_test.cpp replays against kiln's C++ implementation.
"""
import copy
import json
import sys

sys.path.insert(0, sys.argv[1])
import encoding_dsv4 as ref  # noqa: E402

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. 北京"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14.5}},
        "required": ["city"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "web_search", "description": "Search the web.\nReturns \"snippets\" with\ttabs.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"},
                                                     "top_k": {"type": "number", "default": 0.5e-6},
                                                     "filters": {"type": "array", "items": {"type": "object"}}}}}}
NOARGS = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}


def call(cid, name, args):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


ARGS_VARIETY = json.dumps({"s": "text with \"quotes\", \\ backslash, 换行\nand\ttab", "i": 42, "neg": -7,
                           "f": 3.25, "small": 1e-07, "big": 1e16, "exp": 2.5e+22, "pi": 3.141592653589793,
                           "one": 1.0, "negzero": -0.0, "t": True, "fa": False, "n": None,
                           "arr": [1, "two", [3.5, None], {"k": "v"}], "obj": {"z": 1, "a": {"deep": ["x"]}},
                           "emoji": "😀👍🏽", "ctrl": "\u0001\u001f\u007f", "empty": "", "unicode_key_键": "值"},
                          ensure_ascii=True)

CASES = []


def case(name, messages, mode="chat", **kw):
    CASES.append({"name": name, "messages": messages, "thinking_mode": mode, **kw})


def conversations():
    sysm = {"role": "system", "content": "You are a helpful assistant."}
    u1 = {"role": "user", "content": "Hello! 你好 👋"}
    a1 = {"role": "assistant", "content": "Hi, how can I help?", "reasoning_content": "The user greets me."}
    u2 = {"role": "user", "content": "What's the weather in Paris?\nAnd Tokyo?"}
    for mode in ("chat", "thinking"):
        case(f"{mode}_single_user", [u1], mode)
        case(f"{mode}_system_user", [sysm, u1], mode)
        case(f"{mode}_multi_turn", [sysm, u1, a1, u2], mode)
        case(f"{mode}_multi_turn_keep_thinking", [sysm, u1, a1, u2], mode, drop_thinking=False)
        case(f"{mode}_ends_with_assistant", [sysm, u1, a1], mode)
        case(f"{mode}_no_bos", [u1], mode, add_default_bos_token=False)
        case(f"{mode}_effort_max", [sysm, u1], mode, reasoning_effort="max")
        case(f"{mode}_effort_high", [u1, a1, u2], mode, reasoning_effort="high")
        case(f"{mode}_effort_max_no_system", [u1], mode, reasoning_effort="max")
        case(f"{mode}_empty", [], mode)
        case(f"{mode}_system_only", [sysm], mode)
        case(f"{mode}_system_none_content", [{"role": "system", "content": None}, u1], mode)
        case(f"{mode}_user_empty_content", [{"role": "user", "content": ""}], mode)
        case(f"{mode}_consecutive_users", [u1, u2], mode)
        case(f"{mode}_consecutive_assistants", [u1, a1, {"role": "assistant", "content": "More."}], mode)
        case(f"{mode}_assistant_none_content", [u1, {"role": "assistant", "content": None}, u2], mode)
        case(f"{mode}_wo_eos", [u1, dict(a1, wo_eos=True)], mode)
        case(f"{mode}_response_format", [dict(sysm, response_format={"type": "json_object", "schema": {"a": 1}}), u1], mode)
        case(f"{mode}_latest_reminder", [sysm, u1, {"role": "latest_reminder", "content": "Today is 2026-11-22."}], mode)
        case(f"{mode}_latest_reminder_mid", [u1, {"role": "latest_reminder", "content": "R"}, a1, u2], mode)
        case(f"{mode}_developer", [sysm, {"role": "developer", "content": "Answer in French."}, u1], mode)
        case(f"{mode}_developer_last", [u1, a1, {"role": "developer", "content": "Be brief.", "tools": [NOARGS]}], mode)
        case(f"{mode}_developer_before_last_user", [{"role": "developer", "content": "Dev."}, a1, u2], mode)

        tools_sys = dict(sysm, tools=[WEATHER, SEARCH])
        tc = {"role": "assistant", "content": "", "reasoning_content": "I should call tools.",
              "tool_calls": [call("call_1", "get_weather", json.dumps({"city": "Paris", "days": 3})),
                             call("call_2", "web_search", ARGS_VARIETY)]}
        tr1 = {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}
        tr2 = {"role": "tool", "tool_call_id": "call_2", "content": "Result text"}
        fin = {"role": "assistant", "content": "It is 21°C in Paris.", "reasoning_content": "Summarise."}
        case(f"{mode}_tools_defined", [tools_sys, u2], mode)
        case(f"{mode}_tool_call_pending", [tools_sys, u2, tc], mode)
        case(f"{mode}_tool_roundtrip", [tools_sys, u2, tc, tr1, tr2], mode)
        case(f"{mode}_tool_roundtrip_done", [tools_sys, u2, tc, tr1, tr2, fin], mode)
        case(f"{mode}_tool_results_reordered", [tools_sys, u2, tc, tr2, tr1], mode)
        case(f"{mode}_tool_results_then_user", [tools_sys, u2, tc, tr1, tr2, {"role": "user", "content": "Thanks"}], mode)
        case(f"{mode}_tool_content_blocks", [tools_sys, u2, tc,
                                             {"role": "tool", "tool_call_id": "call_1",
                                              "content": [{"type": "text", "text": "part one"},
                                                          {"type": "image", "url": "x"},
                                                          {"type": "text", "text": "part two"}]}], mode)
        case(f"{mode}_tool_missing_content", [u2, tc, {"role": "tool", "tool_call_id": "call_9"}], mode)
        case(f"{mode}_tool_calls_no_tools_defined", [u2, tc, tr1, fin, u1], mode)
        case(f"{mode}_tool_call_with_content", [tools_sys, u2, dict(tc, content="Let me check.")], mode)
        case(f"{mode}_tool_args_invalid_json", [u2, {"role": "assistant", "content": None, "tool_calls": [
            call("c", "web_search", "not json {")]}], mode)
        case(f"{mode}_tool_args_object", [u2, {"role": "assistant", "content": None, "tool_calls": [
            call("c", "web_search", {"query": "already an object", "n": 2})]}], mode)
        case(f"{mode}_tool_args_empty_object", [u2, {"role": "assistant", "tool_calls": [call("c", "now", "{}")]}], mode)
        case(f"{mode}_tool_call_no_id", [u2, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "now", "arguments": "{}"}},
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "content": "b"}, {"role": "tool", "content": "a"}], mode)
        case(f"{mode}_tools_on_user_ignored", [dict(u1, tools=[WEATHER]), a1, u2], mode)
        case(f"{mode}_task_query", [sysm, dict(u1, task="query")], mode)
        case(f"{mode}_task_action", [sysm, dict(u1, task="action")], mode)
        case(f"{mode}_task_title_then_answer", [dict(u1, task="title"), {"role": "assistant", "content": "Greeting"}], mode)
        case(f"{mode}_task_action_then_answer", [dict(u1, task="action"), {"role": "assistant", "content": "none", "reasoning_content": "r"}], mode)
        case(f"{mode}_context", [u2], mode, context=[sysm, u1, a1])
        case(f"{mode}_context_with_tools", [tr1, tr2], mode, context=[tools_sys, u2, tc])
        case(f"{mode}_context_drop", [u2, fin], mode, context=[sysm, {"role": "developer", "content": "D"}, u1, a1])
        case(f"{mode}_multi_turn_tools_history", [tools_sys, u1, tc, tr1, tr2, fin, u2, tc, tr1], mode)

    # Refused inputs: the C++ implementation must refuse them too.
    case("err_bad_mode", [u1], "fast")
    case("err_bad_effort", [u1], "thinking", reasoning_effort="low")
    case("err_unknown_role", [{"role": "narrator", "content": "x"}])
    case("err_developer_empty", [{"role": "developer", "content": ""}])
    case("err_bad_task", [dict(u1, task="summarise")])
    case("err_args_list", [u2, {"role": "assistant", "tool_calls": [call("c", "now", "[1, 2]")]}])
    case("err_args_string", [u2, {"role": "assistant", "tool_calls": [call("c", "now", "\"s\"")]}])


def parse_cases():
    tc_text = ref.render_message(1, [{"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "", "tool_calls": [
                                         call("a", "get_weather", json.dumps({"city": "Paris", "days": 3})),
                                         call("b", "web_search", ARGS_VARIETY)]}], "chat")
    texts = [
        ("chat", "Hello there.<｜end▁of▁sentence｜>"),
        ("chat", "Multi\nline\n\ncontent 你好<｜end▁of▁sentence｜>"),
        ("thinking", "Let me think.\nOK.</think>The answer is 4.<｜end▁of▁sentence｜>"),
        ("thinking", "</think><｜end▁of▁sentence｜>"),
        ("chat", tc_text),
        ("thinking", "reasoning here</think>Calling." + tc_text),
        ("chat", "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"now\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"),
        ("chat", "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"x\" string=\"false\">{\"a\": [1, 2]}</｜DSML｜parameter>\n<｜DSML｜parameter name=\"y\" string=\"true\">multi\nline \"q\"</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"),
        ("chat", "no eos at end"),
        ("thinking", "no think end<｜end▁of▁sentence｜>"),
        ("chat", "x<｜end▁of▁sentence｜>trailing"),
        ("chat", "has <think> inside<｜end▁of▁sentence｜>"),
        ("chat", "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"x\" string=\"maybe\">1</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"),
        ("chat", "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"x\" string=\"true\">1</｜DSML｜parameter>\n<｜DSML｜parameter name=\"x\" string=\"true\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"),
        ("chat", "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>junk<｜end▁of▁sentence｜>"),
        ("chat", "\n\n<｜DSML｜tool_calls>oops"),
        ("chat", "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"),
    ]
    out = []
    for mode, text in texts:
        try:
            out.append({"text": text, "thinking_mode": mode, "expected": ref.parse_message_from_completion_text(text, mode)})
        except Exception as e:  # noqa: BLE001
            out.append({"text": text, "thinking_mode": mode, "error": type(e).__name__})
    return out


def main():
    conversations()
    results = []
    for c in CASES:
        c = copy.deepcopy(c)
        kw = {k: c[k] for k in ("context", "drop_thinking", "add_default_bos_token", "reasoning_effort") if k in c}
        try:
            c["expected"] = ref.encode_messages(copy.deepcopy(c["messages"]), c["thinking_mode"], **copy.deepcopy(kw))
        except Exception as e:  # noqa: BLE001
            c["error"] = type(e).__name__
        results.append(c)
    with open(sys.argv[2], "w") as f:
        json.dump({"encode": results, "parse": parse_cases()}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(results)} encode cases ({sum('error' in r for r in results)} refused), parse cases written")


if __name__ == "__main__":
    main()
