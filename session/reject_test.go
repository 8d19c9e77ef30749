package session_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// forge signs a diff at the next nonce with the gateway's key and whatever
// root it is given: the shape of a diff from a buggy or malicious gateway.
func (b *bundle) forge(t *testing.T, txs ...*sessionpb.Tx) *sessionpb.Diff {
	t.Helper()
	s := b.gw.Replica
	root := s.Root()
	d := &sessionpb.Diff{EscrowId: b.f.Snapshot.EscrowId, Nonce: s.Nonce() + 1, Txs: txs, PostStateRoot: root[:]}
	require.NoError(t, session.SignDiff(b.f.Gateway, sessiontest.ChainID, d))
	return d
}

// requireRejected applies d to a replica and checks that it is rejected for
// reason, with a message containing every fragment, and that the replica's
// state did not change at all.
func requireRejected(t *testing.T, s *session.Session, d *sessionpb.Diff, reason session.Reason, fragments ...string) {
	t.Helper()
	before, err := s.State().Marshal()
	require.NoError(t, err)
	root := s.Root()
	_, err = s.Apply(d)
	require.Error(t, err)
	require.ErrorIs(t, err, reason, "got: %v", err)
	var de *session.DiffError
	require.ErrorAs(t, err, &de)
	for _, f := range fragments {
		require.Contains(t, err.Error(), f)
	}
	after, err := s.State().Marshal()
	require.NoError(t, err)
	require.Equal(t, before, after, "a rejected diff must change nothing")
	require.Equal(t, root, s.Root())
}

func TestApplyRejections(t *testing.T) {
	t.Parallel()
	stranger, err := signing.GenerateKey(sessiontestRand(99))
	require.NoError(t, err)

	cases := []struct {
		name      string
		prepare   func(t *testing.T, b *bundle) // runs honest diffs first
		diff      func(t *testing.T, b *bundle) *sessionpb.Diff
		reason    session.Reason
		fragments []string
	}{
		{
			name:   "nil diff",
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return nil },
			reason: session.ReasonMalformed, fragments: []string{"missing diff"},
		},
		{
			name: "wrong escrow",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				d := b.forge(t)
				d.EscrowId = 8
				return d
			},
			reason: session.ReasonEscrow, fragments: []string{"diff is for escrow 8, this session is escrow 7"},
		},
		{
			name: "nonce gap",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				d := b.forge(t)
				d.Nonce = 3
				require.NoError(t, session.SignDiff(b.f.Gateway, sessiontest.ChainID, d))
				return d
			},
			reason: session.ReasonNonce, fragments: []string{"diff 3 rejected", "nonce must be 1 (latest+1), got 3"},
		},
		{
			name:    "stale nonce",
			prepare: func(t *testing.T, b *bundle) { b.step(t) },
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				d := b.forge(t)
				d.Nonce = 1
				return d
			},
			reason: session.ReasonNonce, fragments: []string{"nonce must be 2 (latest+1), got 1"},
		},
		{
			name:    "past the snapshot's max nonce",
			prepare: func(t *testing.T, b *bundle) { b.step(t); b.step(t) },
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t) },
			reason:  session.ReasonNonce, fragments: []string{"nonce 3 exceeds the escrow's max nonce 2"},
		},
		{
			name:    "no diffs after settlement",
			prepare: func(t *testing.T, b *bundle) { b.step(t, sessiontest.Finalize()); b.step(t, sessiontest.Finalize()) },
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t) },
			reason:  session.ReasonPhase, fragments: []string{"SETTLEMENT"},
		},
		{
			name: "too many txs",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				txs := make([]*sessionpb.Tx, session.MaxTxsPerDiff+1)
				for i := range txs {
					txs[i] = sessiontest.Finalize()
				}
				return b.forge(t, txs...)
			},
			reason: session.ReasonMalformed, fragments: []string{"1025 txs exceed the limit of 1024"},
		},
		{
			name: "short root",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				d := b.forge(t)
				d.PostStateRoot = d.PostStateRoot[:31]
				return d
			},
			reason: session.ReasonMalformed, fragments: []string{"post-state root must be 32 bytes, got 31"},
		},
		{
			name: "unsigned diff",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				d := b.forge(t)
				d.UserSig = nil
				return d
			},
			reason: session.ReasonSignature, fragments: []string{"user signature: unsigned"},
		},
		{
			name: "diff signed by someone other than the creator",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				d := b.forge(t)
				require.NoError(t, session.SignDiff(stranger, sessiontest.ChainID, d))
				return d
			},
			reason: session.ReasonUnauthorized, fragments: []string{"may not sign devshard/v1/diff"},
		},
		{
			name: "diff altered after signing",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				d, err := b.gw.Build(sessiontest.Start(1, 10, 100))
				require.NoError(t, err)
				d.Txs[0].GetStart().MaxTokens = 99
				return d
			},
			reason: session.ReasonSignature, fragments: []string{"signature does not verify"},
		},
		{
			name:   "post-state root mismatch",
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, sessiontest.Start(1, 10, 100)) },
			reason: session.ReasonRoot, fragments: []string{"diff 1 rejected: post-state root mismatch (signed ", ", computed "},
		},
		{
			name:    "start while finalizing",
			prepare: func(t *testing.T, b *bundle) { b.step(t, sessiontest.Finalize()) },
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, sessiontest.Start(2, 10, 100)) },
			reason:  session.ReasonPhase, fragments: []string{"tx 0: StartInference needs phase ACTIVE, session is PHASE_FINALIZING"},
		},
		{
			name:   "start id is not the nonce",
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, sessiontest.Start(5, 10, 100)) },
			reason: session.ReasonMalformed, fragments: []string{"StartInference id must equal the diff nonce 1, got 5"},
		},
		{
			name: "two starts in one diff",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				return b.forge(t, sessiontest.Start(1, 1, 1), sessiontest.Start(1, 1, 1))
			},
			reason: session.ReasonDuplicate, fragments: []string{"tx 1: inference 1 already started"},
		},
		{
			name:   "start without max tokens",
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, sessiontest.Start(1, 10, 0)) },
			reason: session.ReasonMalformed, fragments: []string{"max tokens must be positive"},
		},
		{
			name: "start with a short prompt hash",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				tx := sessiontest.Start(1, 10, 10)
				tx.GetStart().PromptHash = []byte{1}
				return b.forge(t, tx)
			},
			reason: session.ReasonMalformed, fragments: []string{"prompt hash must be 32 bytes, got 1"},
		},
		{
			name:   "reservation overflow",
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, sessiontest.Start(1, 1<<62, 1<<62)) },
			reason: session.ReasonOverflow, fragments: []string{"overflows"},
		},
		{
			name:   "reservation above the balance",
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, sessiontest.Start(1, 0, 1_000_000)) },
			reason: session.ReasonFunds, fragments: []string{"reservation 10000000 exceeds the escrow balance 9998997"},
		},
		{
			name: "gateway tx carrying a slot signature",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				tx := sessiontest.Finalize()
				tx.Sig = &sessionpb.Signature{PubKey: make([]byte, 33), Sig: make([]byte, 64)}
				return b.forge(t, tx)
			},
			reason: session.ReasonMalformed, fragments: []string{"FinalizeRound is a gateway tx"},
		},
		{
			name:   "tx without a body",
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, &sessionpb.Tx{}) },
			reason: session.ReasonMalformed, fragments: []string{"tx 0: tx has no body"},
		},
		{
			name: "nil tx and nil inner body",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				return b.forge(t, sessiontest.Finalize(), &sessionpb.Tx{Body: &sessionpb.Tx_Confirm{}})
			},
			reason: session.ReasonMalformed, fragments: []string{"tx 1: tx has no body"},
		},
		{
			name:   "nil tx",
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, nil) },
			reason: session.ReasonMalformed, fragments: []string{"tx 0: tx has no body"},
		},
		{
			name: "host tx for an unknown inference",
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				return b.forge(t, b.f.Confirm(1, 9, 100))
			},
			reason: session.ReasonStatus, fragments: []string{"inference 9 is not live"},
		},
		{
			name:    "host tx naming a slot outside the group",
			prepare: startOne,
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				return b.forge(t, b.f.SignedBy(b.f.Hosts[1], 3, confirmTx(1, 100)))
			},
			reason: session.ReasonMalformed, fragments: []string{"slot 3 is outside the group of 3"},
		},
		{
			name:    "confirm from a slot that is not the executor",
			prepare: startOne,
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, b.f.Confirm(2, 1, 100)) },
			reason:  session.ReasonUnauthorized, fragments: []string{"must come from executor slot 1, got slot 2"},
		},
		{
			name:    "unsigned confirm",
			prepare: startOne,
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				tx := confirmTx(1, 100)
				tx.Slot = 1
				return b.forge(t, tx)
			},
			reason: session.ReasonSignature, fragments: []string{"slot 1: unsigned"},
		},
		{
			name:    "confirm signed by another member",
			prepare: startOne,
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				return b.forge(t, b.f.SignedBy(b.f.Hosts[2], 1, confirmTx(1, 100)))
			},
			reason: session.ReasonUnauthorized, fragments: []string{"may not sign devshard/v1/tx/confirm"},
		},
		{
			name:    "confirm with no time",
			prepare: startOne,
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, b.f.Confirm(1, 1, 0)) },
			reason:  session.ReasonMalformed, fragments: []string{"confirmed_at must be a positive unix time, got 0"},
		},
		{
			name: "confirm twice",
			prepare: func(t *testing.T, b *bundle) {
				startOne(t, b)
				b.step(t, b.f.Confirm(1, 1, 100))
			},
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, b.f.Confirm(1, 1, 100)) },
			reason: session.ReasonStatus, fragments: []string{"ConfirmStart needs inference 1 PENDING, it is INFERENCE_STATUS_STARTED"},
		},
		{
			name:    "finish before confirm",
			prepare: startOne,
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, b.f.Finish(1, 1, 1, 1)) },
			reason:  session.ReasonStatus, fragments: []string{"FinishInference needs inference 1 STARTED, it is INFERENCE_STATUS_PENDING"},
		},
		{
			name: "finish with a short response hash",
			prepare: func(t *testing.T, b *bundle) {
				startOne(t, b)
				b.step(t, b.f.Confirm(1, 1, 100))
			},
			diff: func(t *testing.T, b *bundle) *sessionpb.Diff {
				tx := &sessionpb.Tx{Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{InferenceId: 1, ResponseHash: []byte{1, 2}}}}
				return b.forge(t, b.f.Signed(1, tx))
			},
			reason: session.ReasonMalformed, fragments: []string{"response hash must be 32 bytes, got 2"},
		},
		{
			name:    "validation of an unfinished inference",
			prepare: startOne,
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, b.f.Validate(2, 1, true)) },
			reason:  session.ReasonStatus, fragments: []string{"Validation needs inference 1 FINISHED or CHALLENGED"},
		},
		{
			name:    "timeout vote by the executor",
			prepare: startOne,
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, b.f.Timeout(1, 1)) },
			reason:  session.ReasonSelfVote, fragments: []string{"slot 1 is held by the executor of inference 1"},
		},
		{
			name:    "timeout vote twice by one slot",
			prepare: func(t *testing.T, b *bundle) { startOne(t, b); b.step(t, b.f.Timeout(0, 1)) },
			diff:    func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t, b.f.Timeout(0, 1)) },
			reason:  session.ReasonDuplicate, fragments: []string{"slot 0 already voted on inference 1"},
		},
		{
			name: "escrow too poor for the fee per nonce",
			prepare: func(t *testing.T, b *bundle) {
				// Reserve all but 7 coins, then pay two more nonces at 3 each.
				b.step(t, sessiontest.Start(1, 0, 999_899))
				b.step(t)
				b.step(t)
			},
			diff:   func(t *testing.T, b *bundle) *sessionpb.Diff { return b.forge(t) },
			reason: session.ReasonFunds, fragments: []string{"escrow balance 1 cannot pay the fee per nonce 3"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(o *sessiontest.Options) {
				if tc.name == "past the snapshot's max nonce" {
					o.MaxNonce = 2
				}
			})
			if tc.prepare != nil {
				tc.prepare(t, b)
			}
			requireRejected(t, b.gw.Replica, tc.diff(t, b), tc.reason, tc.fragments...)
		})
	}
}

func startOne(t *testing.T, b *bundle) { b.step(t, sessiontest.Start(1, 10, 100)) }

func confirmTx(id uint64, at int64) *sessionpb.Tx {
	return &sessionpb.Tx{Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: id, ConfirmedAt: at}}}
}
