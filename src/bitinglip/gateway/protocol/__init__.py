"""OpenAI wire types as msgspec structs, named as OpenAI and vLLM name them, one module per API.

A request field BitingLip does not serve is refused (400 naming it), and every field it reads is typed, so a
wrong type is a 400 naming the field. Each request maps itself to the engine's sampling arguments
(`sampling_args`), checking every value on the way, so serving code never reads sampling fields one by one.
Responses leave out optional fields where OpenAI leaves them out (`omit_defaults`).
"""
