"""The run lifecycle proven by fault injection (issue #20): real ``klexp`` processes driven through
generated, seeded sequences of starts, kills, resumes and injected write errors."""
