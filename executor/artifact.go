package executor

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// Errors of preparing and loading artifacts, which a validator must tell
// from a failed run: neither is a vote against the executor it checks.
var (
	// ErrPreparation is a model that cannot be prepared here: an unknown
	// model, a source whose bytes are not the ones named, an output that
	// cannot be written.
	ErrPreparation = errors.New("preparation failed")
	// ErrConstruction is an artifact that cannot be loaded or started: not
	// an artifact, another format version, another model, another
	// machine's CPU features, a corrupt payload.
	ErrConstruction = errors.New("artifact cannot be loaded")
)

// Preparation asks an executor to prepare Model for this machine and write
// the artifact to Out. Source, when set, is a file the preparation reads
// (weights to convert); SourceSHA256 is the hex SHA-256 its bytes must
// have, checked before anything is prepared from it (VerifySource).
type Preparation struct {
	Model        string `json:"model"`
	Source       string `json:"source,omitempty"`
	SourceSHA256 string `json:"source_sha256,omitempty"`
	Out          string `json:"out"`
}

// Prepared is what a preparation wrote: the artifact's size and the
// SHA-256 of its bytes, hex.
type Prepared struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// Preparer is an Executor that runs its models from prepared artifacts.
//
// Prepare writes the artifact for p.Model at p.Out, replacing what is
// there, and returns what it wrote; its errors wrap ErrPreparation (or
// ErrBadRequest for a preparation no executor could make). The caller has
// checked the source with p.VerifySource. The caller owns p.Out: it
// verifies the file and moves it into its cache.
//
// Load reads the artifact at path and returns an executor that answers
// model's requests from it. Its errors wrap ErrConstruction. The answers
// of what it returns are the ones the Preparer itself gives.
type Preparer interface {
	Executor
	Prepare(ctx context.Context, p Preparation) (Prepared, error)
	Load(model, path string) (Executor, error)
}

// Check refuses a preparation that names no model or no output.
func (p *Preparation) Check() error {
	switch {
	case p.Model == "":
		return fmt.Errorf("%w: a preparation needs a model", ErrBadRequest)
	case p.Out == "":
		return fmt.Errorf("%w: a preparation needs an output path (out)", ErrBadRequest)
	case p.SourceSHA256 != "" && p.Source == "":
		return fmt.Errorf("%w: source_sha256 is set but source is not", ErrBadRequest)
	}
	return nil
}

// VerifySource checks that the source, when p names one with a SHA-256,
// has those bytes. Its errors wrap ErrPreparation.
func (p *Preparation) VerifySource() error {
	if p.Source == "" || p.SourceSHA256 == "" {
		return nil
	}
	f, err := os.Open(p.Source)
	if err != nil {
		return fmt.Errorf("%w: cannot read the source of %s: %v", ErrPreparation, p.Model, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("%w: cannot read the source of %s: %v", ErrPreparation, p.Model, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, p.SourceSHA256) {
		return fmt.Errorf("%w: the source %s of %s has sha256 %s, not the %s it was named with", ErrPreparation, p.Source, p.Model, got, p.SourceSHA256)
	}
	return nil
}

// CPUFeatures names the machine an artifact is built for: GOARCH and, on
// Linux, a hash of the CPU's feature flags from /proc/cpuinfo, e.g.
// "amd64/5c1e09b2a4f07d3e". Code compiled for one set of features may
// crash on a CPU without them, so an artifact built here is loaded only
// where this is the same.
func CPUFeatures() string { return cpuFeatures() }

var cpuFeatures = sync.OnceValue(func() string {
	flags := cpuFlags()
	if flags == "" {
		return runtime.GOARCH
	}
	sum := sha256.Sum256([]byte(flags))
	return runtime.GOARCH + "/" + hex.EncodeToString(sum[:8])
})

// cpuFlags is the sorted, deduplicated feature flags of the first CPU in
// /proc/cpuinfo ("flags" on x86, "Features" on arm), space-separated; ""
// where there is no such file.
func cpuFlags() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if name = strings.TrimSpace(name); name == "flags" || name == "Features" {
			f := strings.Fields(value)
			slices.Sort(f)
			return strings.Join(slices.Compact(f), " ")
		}
	}
	return ""
}

// The artifact file: a header, the payload, and the payload's SHA-256.
//
//	magic     8 bytes, artifactMagic
//	version   uint16, big-endian: artifactVersion
//	model     uint16 length, then the bytes
//	features  uint16 length, then the bytes (CPUFeatures, or empty when
//	          the artifact does not depend on the machine)
//	payload   uint64 length, then the bytes
//	checksum  32 bytes, SHA-256 of the payload
const (
	artifactMagic   = "DSHDART\x00"
	artifactVersion = 1
	// maxArtifactField bounds the model and features fields.
	maxArtifactField = 1 << 10
)

// Artifact is a prepared model as it is stored.
type Artifact struct {
	Model    string
	Features string
	Payload  []byte
}

// Encode is a's file bytes.
func (a *Artifact) Encode() []byte {
	b := make([]byte, 0, len(artifactMagic)+2+2+len(a.Model)+2+len(a.Features)+8+len(a.Payload)+sha256.Size)
	b = append(b, artifactMagic...)
	b = binary.BigEndian.AppendUint16(b, artifactVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.Model)))
	b = append(b, a.Model...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.Features)))
	b = append(b, a.Features...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(a.Payload)))
	b = append(b, a.Payload...)
	sum := sha256.Sum256(a.Payload)
	return append(b, sum[:]...)
}

// DecodeArtifact reads an artifact file's bytes, checking its magic, its
// format version, its lengths and its payload's checksum. Its errors wrap
// ErrConstruction; the caller checks the model and the features.
func DecodeArtifact(b []byte) (Artifact, error) {
	fail := func(format string, args ...any) (Artifact, error) {
		return Artifact{}, fmt.Errorf("%w: "+format, append([]any{ErrConstruction}, args...)...)
	}
	if len(b) < len(artifactMagic) || string(b[:len(artifactMagic)]) != artifactMagic {
		return fail("not a devshard artifact (no magic %q at its start)", artifactMagic)
	}
	r := b[len(artifactMagic):]
	u16 := func() (int, bool) {
		if len(r) < 2 {
			return 0, false
		}
		v := binary.BigEndian.Uint16(r)
		r = r[2:]
		return int(v), true
	}
	field := func() (string, bool) {
		n, ok := u16()
		if !ok || n > maxArtifactField || len(r) < n {
			return "", false
		}
		s := string(r[:n])
		r = r[n:]
		return s, true
	}
	version, ok := u16()
	if !ok {
		return fail("truncated in its header")
	}
	if version != artifactVersion {
		return fail("format version %d; this executor reads version %d, so it must be prepared again", version, artifactVersion)
	}
	var a Artifact
	if a.Model, ok = field(); !ok {
		return fail("truncated in its header")
	}
	if a.Features, ok = field(); !ok {
		return fail("truncated in its header")
	}
	if len(r) < 8 {
		return fail("truncated in its header")
	}
	n := binary.BigEndian.Uint64(r)
	r = r[8:]
	if n > uint64(len(r)) || uint64(len(r))-n != sha256.Size {
		return fail("the payload is recorded as %d bytes, but %d bytes follow the header (with the %d-byte checksum)", n, len(r), sha256.Size)
	}
	a.Payload = r[:n]
	want := r[n:]
	if got := sha256.Sum256(a.Payload); !bytes.Equal(got[:], want) {
		return fail("payload checksum mismatch (recorded %x…, computed %x…): the file is corrupt", want[:6], got[:6])
	}
	return a, nil
}

// WriteArtifact writes a to path and returns what it wrote. A file it
// could not finish is removed. Its errors wrap ErrPreparation.
func WriteArtifact(path string, a *Artifact) (Prepared, error) {
	b := a.Encode()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return Prepared{}, fmt.Errorf("%w: cannot write the artifact of %s: %v", ErrPreparation, a.Model, err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return Prepared{}, fmt.Errorf("%w: cannot write the artifact of %s to %s: %v", ErrPreparation, a.Model, path, err)
	}
	sum := sha256.Sum256(b)
	return Prepared{Bytes: int64(len(b)), SHA256: hex.EncodeToString(sum[:])}, nil
}

// ReadArtifact reads the artifact at path and checks it was prepared for
// model on a machine with features. Its errors wrap ErrConstruction and
// name the path.
func ReadArtifact(path, model, features string) (Artifact, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Artifact{}, fmt.Errorf("%w: %v", ErrConstruction, err)
	}
	a, err := DecodeArtifact(b)
	switch {
	case err != nil:
		return Artifact{}, fmt.Errorf("artifact %s: %w", path, err)
	case a.Model != model:
		return Artifact{}, fmt.Errorf("%w: the artifact %s was prepared for model %q, not %q", ErrConstruction, path, a.Model, model)
	case a.Features != features:
		return Artifact{}, fmt.Errorf("%w: the artifact %s was built for CPU features %q; this machine's are %q, so it must be prepared here again", ErrConstruction, path, a.Features, features)
	}
	return a, nil
}
