package executor

// Template overheads PromptTokenBound allows, in tokens, on top of one token
// per byte of each message's role and content.
const (
	// boundPerMessage covers a chat template's framing of one message: the
	// special tokens and separators around its role and content
	// (ChatML's <|im_start|>, <|im_end|> and newlines; Llama 3's header
	// tokens), and the leading-space token SentencePiece adds to a text.
	boundPerMessage = 16
	// boundPerRequest covers what a template adds once per request: a
	// begin-of-text token, the prompt that opens the assistant's turn, and
	// the default system message some templates insert (Qwen's, Llama
	// 3.1's date header), which run to a few dozen tokens.
	boundPerRequest = 128
)

// PromptTokenBound is the prompt token count a StartInference reserves for
// (its input_tokens): never below what the executor will report as the
// prompt's tokens, so the reservation covers the charge. The built-in model
// counts exactly as Builtin does. Any other model is served by a tokenizer
// the gateway does not have, so it gets an upper bound instead: one token
// per UTF-8 byte of every role and content, plus boundPerMessage per
// message and boundPerRequest per request. The bound rests on two
// assumptions about the model's server: its tokenizer never yields more
// tokens than a text has bytes (true of byte-level BPE, which falls back to
// one token per byte, and of SentencePiece with byte fallback, up to its
// leading-space token), and its chat template adds no more than those
// overheads. A bound above the real count only holds back more of the
// escrow until the inference finishes; the charge is the executor's count.
func PromptTokenBound(model string, msgs []Message) uint64 {
	if model == BuiltinModel {
		return uint64(PromptTokens(msgs))
	}
	n := uint64(boundPerRequest)
	for _, m := range msgs {
		n += boundPerMessage + uint64(len(m.Role)) + uint64(len(m.Content))
	}
	return n
}
