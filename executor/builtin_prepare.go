package executor

import (
	"context"
	"encoding/binary"
	"fmt"
)

// The built-in model's artifact holds its table: the vocabulary it draws
// words from, a uint32 count then each word as a uint16 length and its
// bytes. A model loaded from it draws from that table and nothing else, so
// an artifact that loads wrong cannot answer right by accident.

// features is the CPU features b's artifacts are built for.
func (b Builtin) features() string {
	if b.Features != "" {
		return b.Features
	}
	return CPUFeatures()
}

// Prepare implements Preparer: it writes the vocabulary table for this
// machine. The built-in model has no source to read.
func (b Builtin) Prepare(ctx context.Context, p Preparation) (Prepared, error) {
	if p.Model != BuiltinModel {
		return Prepared{}, fmt.Errorf("%w: model %q cannot be prepared here; this executor serves %q", ErrPreparation, p.Model, BuiltinModel)
	}
	if err := ctx.Err(); err != nil {
		return Prepared{}, err
	}
	return WriteArtifact(p.Out, &Artifact{Model: p.Model, Features: b.features(), Payload: encodeVocabulary(vocabulary)})
}

// Load implements Preparer.
func (b Builtin) Load(model, path string) (Executor, error) {
	if model != BuiltinModel {
		return nil, fmt.Errorf("%w: model %q is not served here; this executor serves %q", ErrConstruction, model, BuiltinModel)
	}
	a, err := ReadArtifact(path, model, b.features())
	if err != nil {
		return nil, err
	}
	vocab, err := decodeVocabulary(a.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: the artifact %s: %v", ErrConstruction, path, err)
	}
	return &loadedBuiltin{b: b, vocab: vocab}, nil
}

// loadedBuiltin is the built-in model run from its artifact's table.
type loadedBuiltin struct {
	b     Builtin
	vocab []string
}

func (l *loadedBuiltin) Models() []string { return l.b.Models() }

func (l *loadedBuiltin) Execute(ctx context.Context, req Request, emit func(string) error) (Result, error) {
	return l.b.run(ctx, l.vocab, req, emit)
}

func encodeVocabulary(words []string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(words)))
	for _, w := range words {
		b = binary.BigEndian.AppendUint16(b, uint16(len(w)))
		b = append(b, w...)
	}
	return b
}

func decodeVocabulary(b []byte) ([]string, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("its table is truncated")
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	if n == 0 || uint64(n) > uint64(len(b))/2 {
		return nil, fmt.Errorf("its table counts %d words in %d bytes", n, len(b))
	}
	words := make([]string, n)
	for i := range words {
		if len(b) < 2 {
			return nil, fmt.Errorf("its table is truncated at word %d", i)
		}
		l := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		if l == 0 || len(b) < l {
			return nil, fmt.Errorf("its table is truncated at word %d", i)
		}
		words[i], b = string(b[:l]), b[l:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("its table has %d bytes after its last word", len(b))
	}
	return words, nil
}
