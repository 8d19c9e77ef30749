package cmd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	autocliv1 "cosmossdk.io/api/cosmos/autocli/v1"
	gogoproto "github.com/cosmos/gogoproto/proto"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// checkNumberArgs gives every generated query and tx command whose
// positional arguments include a number a check that says, in words,
// which argument is not a number. autocli binds positional arguments to
// hidden flags named 0, 1, ..., so without it a bad escrow id reads
// `invalid argument "abc" for "--0" flag`.
func checkNumberArgs(root *cobra.Command, modules map[string]*autocliv1.ModuleOptions) {
	for name, m := range modules {
		if m == nil {
			continue
		}
		for _, tree := range []struct {
			verb string
			desc *autocliv1.ServiceCommandDescriptor
		}{{"query", m.Query}, {"tx", m.Tx}} {
			if tree.desc == nil || tree.desc.Service == "" {
				continue
			}
			d, err := gogoproto.HybridResolver.FindDescriptorByName(protoreflect.FullName(tree.desc.Service))
			if err != nil {
				continue
			}
			svc, ok := d.(protoreflect.ServiceDescriptor)
			if !ok {
				continue
			}
			for _, o := range tree.desc.RpcCommandOptions {
				method := svc.Methods().ByName(protoreflect.Name(o.RpcMethod))
				if method == nil || o.Skip || len(o.PositionalArgs) == 0 {
					continue
				}
				use, _, _ := strings.Cut(o.Use, " ")
				cmd, rest, err := root.Find([]string{tree.verb, name, use})
				if err != nil || len(rest) > 0 || cmd.Name() != use {
					continue
				}
				wrapArgs(cmd, numberArgs(method.Input(), o.PositionalArgs))
			}
		}
	}
}

// numberArg is a positional argument that must parse as a whole number.
type numberArg struct {
	index    int
	name     string // as the error names it
	unsigned bool
	bits     int
}

func numberArgs(input protoreflect.MessageDescriptor, args []*autocliv1.PositionalArgDescriptor) []numberArg {
	var out []numberArg
	for i, a := range args {
		f := input.Fields().ByName(protoreflect.Name(a.ProtoField))
		if f == nil || a.Varargs || f.IsList() {
			continue
		}
		n := numberArg{index: i, name: strings.ReplaceAll(a.ProtoField, "_", " ")}
		switch f.Kind() {
		case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
			n.unsigned, n.bits = true, 64
		case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
			n.unsigned, n.bits = true, 32
		case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
			n.bits = 64
		case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
			n.bits = 32
		default:
			continue
		}
		out = append(out, n)
	}
	return out
}

// wrapArgs runs cmd's own argument check, then the number checks.
func wrapArgs(cmd *cobra.Command, nums []numberArg) {
	if len(nums) == 0 {
		return
	}
	own := cmd.Args
	cmd.Args = func(c *cobra.Command, args []string) error {
		if own != nil {
			if err := own(c, args); err != nil {
				return err
			}
		}
		for _, n := range nums {
			if n.index >= len(args) {
				continue
			}
			if err := n.check(c.Name(), args[n.index]); err != nil {
				return err
			}
		}
		return nil
	}
}

func (n numberArg) check(cmdName, text string) error {
	name := n.name
	if name == "id" {
		name = cmdName + " id" // "escrow id", not "id"
	}
	var err error
	if n.unsigned {
		_, err = strconv.ParseUint(text, 10, n.bits)
	} else {
		_, err = strconv.ParseInt(text, 10, n.bits)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, strconv.ErrRange):
		return fmt.Errorf("%s is out of range: %q does not fit in %d bits", name, text, n.bits)
	case n.unsigned:
		return fmt.Errorf("%s must be a whole number, 0 or more, got %q", name, text)
	default:
		return fmt.Errorf("%s must be a whole number, got %q", name, text)
	}
}

// requireInitialisedHome refuses to start a node on a home `init` never
// wrote (no genesis). The SDK would otherwise stop at the first setting
// its default config leaves empty (the minimum gas price), which says
// nothing about the missing init.
func requireInitialisedHome(home string) error {
	genesis := filepath.Join(home, "config", "genesis.json")
	if _, err := os.Stat(genesis); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no chain home at %s (no config/genesis.json): run `devshard chain init <moniker> --home %s` and the genesis steps of docs/chain.md first, or `devshard chain dev` for a throwaway local chain", home, home)
	} else if err != nil {
		return err
	}
	return nil
}
