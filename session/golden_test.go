package session_test

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

var update = flag.Bool("update", false, "rewrite the golden vectors in testdata/")

// The initial root, rebuilt by hand from the layout in docs/protocol.md.
// If this fails, the code and the document disagree.
func TestRootLayoutMatchesDocument(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	s := f.NewSession(nil)

	be64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	tag := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	// Each slot's stats leaf: u32 slot then seven zero u64 fields.
	var leaves []byte
	for slot := range uint32(3) {
		h := sha256.Sum256(cat(be32(slot), make([]byte, 7*8)))
		leaves = append(leaves, h[:]...)
	}
	stats := sha256.Sum256(cat(tag("devshard/v1/stats"), be32(3), leaves))
	// The empty tree: a zero leaf hashed up 32 levels with a 0x01 prefix.
	var empty [32]byte
	for range 32 {
		empty = sha256.Sum256(cat([]byte{1}, empty[:], empty[:]))
	}
	root := sha256.Sum256(cat(
		tag("devshard/v1/root"), be64(7), be32(2), be64(0), []byte{1}, be64(0),
		be64(10_000_000-1000), be64(0), be64(1000), stats[:], empty[:], be64(0), make([]byte, 32),
	))
	require.Equal(t, hex.EncodeToString(root[:]), hex.EncodeToString(sliceOf(s.Root())))
}

func sliceOf(h [32]byte) []byte { return h[:] }

type goldenStep struct {
	Nonce uint64 `json:"nonce"`
	Root  string `json:"root"`
}

type golden struct {
	DiffSignBytes string       `json:"diff_sign_bytes"`
	TxSignBytes   string       `json:"tx_sign_bytes"`
	Steps         []goldenStep `json:"steps"`
}

// A scripted session's roots and sign bytes are pinned in testdata. A change
// here is a protocol change: bump the protocol version and say so.
func TestGoldenVectors(t *testing.T) {
	t.Parallel()
	o := sessiontest.DefaultOptions()
	o.ValidationRateBps = 10000 // both eligible slots validate each inference
	f := sessiontest.New(1, o)
	gw := f.Sequencer()
	script := [][]*sessionpb.Tx{
		{sessiontest.Start(1, 12, 100)},
		{f.Confirm(1, 1, 1_700_000_001), sessiontest.Start(2, 5, 50)},
		{f.Finish(1, 1, 12, 30), f.Confirm(2, 2, 1_700_000_002)},
		{f.Finish(2, 2, 5, 50), f.Validate(0, 1, true), f.Validate(2, 1, true)},
		{f.Validate(0, 2, false)},
		{f.Validate(1, 2, false)},
		{sessiontest.Start(7, 1, 1)},
		{f.Timeout(2, 7), f.Timeout(0, 7)},
		{sessiontest.Finalize()},
		{sessiontest.Finalize()},
	}
	var got golden
	for i, txs := range script {
		d, err := gw.Next(txs...)
		require.NoError(t, err, "step %d", i)
		if i == 2 {
			got.DiffSignBytes = hex.EncodeToString(session.DiffSignBytes(f.Snapshot.ChainId, d))
			msg, err := session.TxSignBytes(f.Snapshot.ChainId, d.EscrowId, d.Txs[0])
			require.NoError(t, err)
			got.TxSignBytes = hex.EncodeToString(msg)
		}
		r := gw.Replica.Root()
		got.Steps = append(got.Steps, goldenStep{Nonce: d.Nonce, Root: hex.EncodeToString(r[:])})
	}
	path := filepath.Join("testdata", "golden_session.json")
	if *update {
		raw, err := json.MarshalIndent(got, "", "  ")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, append(raw, '\n'), 0o644))
	}
	raw, err := os.ReadFile(path)
	require.NoError(t, err, "run go test ./session -run Golden -update to create it")
	var want golden
	require.NoError(t, json.Unmarshal(raw, &want))
	require.Equal(t, want, got)
}
