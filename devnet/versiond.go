package devnet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	sdkmath "cosmossdk.io/math"
	"github.com/cosmos/cosmos-sdk/codec"
	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	govtypes "github.com/cosmos/cosmos-sdk/x/gov/types"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chaincfg"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// RuntimeV1 is the name the devnet gives its own build in the genesis
// approved_versions when its hosts run through versiond.
const RuntimeV1 = "v1"

// VersiondVotingPeriod is gov's voting period on a devnet whose hosts run
// through versiond, so a proposal to approve or remove a runtime version
// takes effect within seconds.
const VersiondVotingPeriod = 3 * time.Second

// versiondHostURL is the URL a host running through versiond registers on
// chain: versiond's public address. Clients add the route of an escrow's
// runtime version (/devshard/<runtime_version>/) themselves.
func versiondHostURL(public string) string {
	return "http://" + public
}

// versiondSetup is what a home made with Config.Versiond keeps across runs:
// the binary server's address, which the genesis v1 URL names.
type versiondSetup struct {
	BinariesListen string `json:"binaries_listen"`
}

// versiondArgs are the `devshard versiond` arguments that run host i: its
// public address is listen, and each version's child is a `devshard host`
// on the host's key, keeping its storage in its own working directory (two
// versions never share a database: each finishes its own escrows).
func versiondArgs(cfg Config, h *Host, listen, chainGRPC, chainRPC string, hostArgs []string) ([]string, error) {
	child := append([]string{"{binary}", "host", "--home", "{workdir}", "--key-file", filepath.Join(h.Home, "host.key"),
		"--listen", "{listen}"}, hostArgs...)
	// versiond splits --command at spaces, so no argument may hold one.
	for _, a := range child {
		if a == "" || strings.ContainsAny(a, " \t\n") {
			return nil, fmt.Errorf("%s: the host argument %q is empty or holds a space, which versiond's --command cannot carry; use a home without spaces", h.Name, a)
		}
	}
	return []string{"versiond", "--dir", h.VersiondDir(), "--listen", listen,
		"--chain-grpc", chainGRPC, "--chain-rpc", chainRPC, "--chain-stall-after", cfg.stallAfter().String(),
		"--trusted-ca", filepath.Join(cfg.Home, "binaries", "ca.pem"),
		"--command", strings.Join(child, " ")}, nil
}

// VersiondDir is the directory of the host's versiond: its installed
// versions and their working directories (docs/versiond.md).
func (h *Host) VersiondDir() string { return filepath.Join(h.Home, "versiond") }

// ChildLog is the log of the host's child running version name, under
// versiond.
func (h *Host) ChildLog(name string) string {
	return filepath.Join(h.VersiondDir(), "versions", name, "work", "child.log")
}

// PublicURL is the host's public address: versiond's when the host runs
// through it, else the host's own.
func (h *Host) PublicURL() string { return h.public }

// startBinaries serves cfg.Binary as RuntimeV1 over HTTPS, and shapes a
// new chain's genesis to approve it. A resumed chain keeps the v1 its
// genesis approved: each versiond has that binary installed already.
func startBinaries(cfg *Config, st *setup, step func(string, ...any)) (*BinaryServer, error) {
	s, err := StartBinaryServer(filepath.Join(cfg.Home, "binaries"), st.Versiond.BinariesListen)
	if err != nil {
		return nil, err
	}
	v1, err := s.Publish(RuntimeV1, cfg.Binary, 0)
	if err != nil {
		s.Close()
		return nil, err
	}
	withVersiondGenesis(cfg, v1)
	step("serving this build as runtime %s at %s (sha256 %s; CA %s); the hosts run through versiond", v1.Name, v1.Url, v1.Sha256, s.CAFile)
	return s, nil
}

// withVersiondGenesis approves v1 in a copy of params and shortens gov's
// voting period in front of the caller's own genesis change.
func withVersiondGenesis(cfg *Config, v1 devshardtypes.ApprovedVersion) {
	p := *cfg.Params
	p.ApprovedVersions = append([]devshardtypes.ApprovedVersion{v1}, p.ApprovedVersions...)
	cfg.Params = &p
	then := cfg.Genesis
	cfg.Genesis = func(cdc codec.JSONCodec, state chain.GenesisState) error {
		var gov govv1.GenesisState
		if err := cdc.UnmarshalJSON(state[govtypes.ModuleName], &gov); err != nil {
			return err
		}
		voting := VersiondVotingPeriod
		gov.Params.VotingPeriod = &voting
		state[govtypes.ModuleName] = cdc.MustMarshalJSON(&gov)
		if then != nil {
			return then(cdc, state)
		}
		return nil
	}
}

// BinaryServer serves runtime binaries over HTTPS, with a certificate of a
// CA the devnet makes at each start: versiond downloads only over https,
// and trusts this CA through --trusted-ca.
type BinaryServer struct {
	// URL is the server's base, https://127.0.0.1:port.
	URL string
	// CAFile is the PEM of the CA that signed the server's certificate.
	CAFile string

	srv   *http.Server
	mu    sync.Mutex
	files map[string]served
}

type served struct {
	path string
	// rate bounds the bytes a second the file is sent at; 0: no bound.
	rate int64
}

// StartBinaryServer makes a CA and a certificate for 127.0.0.1 in dir
// (the CA as dir/ca.pem) and serves published files on listen.
func StartBinaryServer(dir, listen string) (*BinaryServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "ca.pem")
	cert, err := newServerCert(caFile)
	if err != nil {
		return nil, fmt.Errorf("making the binary server's CA: %w", err)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("the binary server cannot listen on %s: %w", listen, err)
	}
	s := &BinaryServer{URL: "https://" + ln.Addr().String(), CAFile: caFile, files: map[string]served{}}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	go func() { _ = s.srv.ServeTLS(ln, "", "") }()
	return s, nil
}

// Publish serves the file at path as <URL>/<name>, at most bytesPerSecond
// (0: as fast as it goes; a test slows a download down to interrupt it),
// and returns its URL and sha256, as an approved version names them.
func (s *BinaryServer) Publish(name, path string, bytesPerSecond int64) (devshardtypes.ApprovedVersion, error) {
	sum, err := fileSHA256(path)
	if err != nil {
		return devshardtypes.ApprovedVersion{}, err
	}
	s.mu.Lock()
	s.files[name] = served{path: path, rate: bytesPerSecond}
	s.mu.Unlock()
	return devshardtypes.ApprovedVersion{Name: name, Url: s.URL + "/" + name, Sha256: sum}, nil
}

// Close stops the server.
func (s *BinaryServer) Close() error {
	if s == nil {
		return nil
	}
	return s.srv.Close()
}

func (s *BinaryServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	f, ok := s.files[strings.TrimPrefix(r.URL.Path, "/")]
	s.mu.Unlock()
	if !ok || r.Method != http.MethodGet {
		http.Error(w, "no such binary here; the devnet serves only the versions it published.", http.StatusNotFound)
		return
	}
	file, err := os.Open(f.path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer file.Close()
	info, err := file.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if f.rate <= 0 {
		http.ServeContent(w, r, "", info.ModTime(), file)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(info.Size(), 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	// A tenth of a second's worth at a time, each followed by its share
	// of the second.
	chunk := max(f.rate/10, 1)
	flusher, _ := w.(http.Flusher)
	for {
		n, err := io.CopyN(w, file, chunk)
		if flusher != nil {
			flusher.Flush()
		}
		if err != nil || n < chunk {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hashing %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// newServerCert makes a CA, writes its certificate to caFile, and returns
// a certificate for 127.0.0.1 that it signed. The CA's key is never
// written: a new one is made at every start.
func newServerCert(caFile string) (tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "devshard devnet binaries CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}, nil
}

// ProposeVersions sets the chain's approved_versions to list by
// governance: a MsgUpdateParams of x/devshard with the gov module account
// as its authority, proposed by the first validator's operator and voted
// yes by every validator's. It returns once the list is in effect, or
// with an error if the proposal did not pass.
func (n *Network) ProposeVersions(ctx context.Context, title string, list []devshardtypes.ApprovedVersion) error {
	q := devshardtypes.NewQueryClient(n.Chain.Conn())
	res, err := q.Params(ctx, &devshardtypes.QueryParamsRequest{})
	if err != nil {
		return fmt.Errorf("reading the chain's params: %w", err)
	}
	next := res.Params
	next.ApprovedVersions = list
	voters := n.Chain.voters()
	proposer := voters[0]
	authority := authtypes.NewModuleAddress(govtypes.ModuleName).String()
	msg, err := govv1.NewMsgSubmitProposal([]sdk.Msg{&devshardtypes.MsgUpdateParams{Authority: authority, Params: next}},
		sdk.NewCoins(sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(10_000_000))), proposer.Address.String(), "", title, "runtime versions", false)
	if err != nil {
		return err
	}
	tx, err := n.Chain.TxClient().Send(ctx, proposer.Key, msg)
	if err != nil {
		return fmt.Errorf("submitting the proposal %q: %w", title, err)
	}
	id, err := proposalID(tx)
	if err != nil {
		return err
	}
	for _, v := range voters {
		if _, err := n.Chain.TxClient().Send(ctx, v.Key, govv1.NewMsgVote(v.Address, id, govv1.OptionYes, "")); err != nil {
			return fmt.Errorf("voting on proposal %d: %w", id, err)
		}
	}
	gq := govv1.NewQueryClient(n.Chain.Conn())
	for {
		p, err := gq.Proposal(ctx, &govv1.QueryProposalRequest{ProposalId: id})
		if err == nil {
			switch p.Proposal.Status {
			case govv1.StatusPassed:
				return nil
			case govv1.StatusRejected, govv1.StatusFailed:
				return fmt.Errorf("proposal %d (%q) ended %s: %s", id, title, p.Proposal.Status, p.Proposal.FailedReason)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for proposal %d (%q) to pass: %w", id, title, ctx.Err())
		case <-time.After(n.cfg.BlockTime):
		}
	}
}

// proposalID reads the id of the proposal a MsgSubmitProposal tx made.
func proposalID(tx *sdk.TxResponse) (uint64, error) {
	for _, ev := range tx.Events {
		if ev.Type != govtypes.EventTypeSubmitProposal {
			continue
		}
		for _, a := range ev.Attributes {
			if a.Key == govtypes.AttributeKeyProposalID {
				return strconv.ParseUint(a.Value, 10, 64)
			}
		}
	}
	return 0, errors.New("the proposal's tx names no proposal id in its events")
}

// voters are the accounts that vote for the chain's validators: the
// single validator's operator, or every validator process's.
func (c *Chain) voters() []node.Account {
	if c.multi == nil {
		return []node.Account{c.Funder}
	}
	var out []node.Account
	for _, v := range c.multi.Validators() {
		out = append(out, v.Operator)
	}
	return out
}
