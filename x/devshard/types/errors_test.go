package types

import (
	"go/ast"
	"go/parser"
	"go/token"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
)

// sessionReasons reads every Reason constant the protocol package declares
// from its source, so a reason added there without a code here fails
// TestEveryReasonHasOneCode.
func sessionReasons(t *testing.T) []session.Reason {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../../../session/errors.go", nil, 0)
	require.NoError(t, err)
	var out []session.Reason
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			v := spec.(*ast.ValueSpec)
			if id, ok := v.Type.(*ast.Ident); !ok || id.Name != "Reason" {
				continue
			}
			for _, val := range v.Values {
				s, err := strconv.Unquote(val.(*ast.BasicLit).Value)
				require.NoError(t, err)
				out = append(out, session.Reason(s))
			}
		}
	}
	require.NotEmpty(t, out)
	return out
}

// Every reason the protocol package can refuse a settlement with has its
// own registered code, no two share one, and ReasonOf reads each back.
func TestEveryReasonHasOneCode(t *testing.T) {
	t.Parallel()
	reasons := sessionReasons(t)
	require.Len(t, reasonErrors, len(reasons), "one registered error per session.Reason, and none for anything else")
	codes := map[uint32]session.Reason{}
	for _, r := range reasons {
		e, ok := reasonErrors[r]
		require.True(t, ok, "session.Reason %q has no registered code", r)
		require.Equal(t, ModuleName, e.Codespace())
		prev, dup := codes[e.ABCICode()]
		require.False(t, dup, "code %d is registered for both %q and %q", e.ABCICode(), prev, r)
		codes[e.ABCICode()] = r
		back, ok := ReasonOf(e.Codespace(), e.ABCICode())
		require.True(t, ok)
		require.Equal(t, r, back)
	}
}

// The codes are on-chain API: a client built against an older chain reads
// them. This table pins them; a renumbering fails here.
func TestReasonCodesAreNeverRenumbered(t *testing.T) {
	t.Parallel()
	want := map[session.Reason]uint32{
		session.ReasonMalformed: 23, session.ReasonEscrow: 24, session.ReasonNonce: 25, session.ReasonPhase: 26,
		session.ReasonSignature: 27, session.ReasonUnauthorized: 28, session.ReasonStatus: 29, session.ReasonFunds: 30,
		session.ReasonSelfVote: 31, session.ReasonDuplicate: 32, session.ReasonOverflow: 33, session.ReasonRoot: 34,
		session.ReasonFees: 35, session.ReasonVersion: 36, session.ReasonQuorum: 37, session.ReasonConservation: 38,
		session.ReasonState: 39, session.ReasonStale: 40, session.ReasonNotSampled: 41, session.ReasonEncoding: 42,
	}
	for r, code := range want {
		require.Equal(t, code, reasonErrors[r].ABCICode(), "%q", r)
	}
}

// Codes outside the reasons, and other modules' codes, are no reason.
func TestReasonOfOtherCodes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		codespace string
		code      uint32
	}{
		{ModuleName, ErrSettlement.ABCICode()},
		{ModuleName, ErrEscrowClosed.ABCICode()},
		{"sdk", reasonErrors[session.ReasonRoot].ABCICode()},
		{"", 0},
	} {
		_, ok := ReasonOf(c.codespace, c.code)
		require.False(t, ok, "%s/%d", c.codespace, c.code)
	}
}

// A refusal by the protocol package keeps its reason on the chain's side
// (errors.Is) and in its ABCI code (what a client reads).
func TestSettlementRejectedKeepsTheReason(t *testing.T) {
	t.Parallel()
	err := SettlementRejected(&session.SettlementError{EscrowID: 5, Reason: session.ReasonQuorum, Detail: "3 of 4 slots signed"}, " (note)")
	require.ErrorIs(t, err, ErrSettlement)
	require.ErrorIs(t, err, session.ReasonQuorum)
	require.ErrorIs(t, err, reasonErrors[session.ReasonQuorum])
	var coded interface {
		ABCICode() uint32
		Codespace() string
	}
	require.ErrorAs(t, err, &coded)
	r, ok := ReasonOf(coded.Codespace(), coded.ABCICode())
	require.True(t, ok)
	require.Equal(t, session.ReasonQuorum, r)
}
