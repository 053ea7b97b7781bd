//! Every case of `testdata/cases/` (format: `testdata/README.md`) as its own test: rbuild
//! builds it with every output type and each output is checked against the case's
//! `expect.json` with independent tools (skopeo, umoci, podman) and readers.

mod common;

/// One test per case directory, plus a check that the list and the directories agree.
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                common::case::run_case(stringify!($name));
            }
        )*

        /// Every case directory has a test here, and every test has a directory.
        #[test]
        fn every_case_directory_is_tested() {
            common::case::check_case_list(&[$(stringify!($name)),*]);
        }
    };
}

cases! {
    add_extract_formats, add_no_extract, arg_env_scoping, build_arg_override,
    buildkit_chown_group_only, buildkit_copy_from_keeps_dir_owners, buildkit_copy_parents_pivot,
    buildkit_duplicate_stage_names, buildkit_env_key_and_arg_name,
    buildkit_wildcards_partial_and_file_dest, err_copy_from_variable,
    cmd_entrypoint_keep, cmd_entrypoint_reset, copy_chmod_octal, copy_chmod_symbolic,
    copy_chown_names, copy_chown_numeric, copy_dest_rules, copy_dest_through_symlink,
    copy_dir_contents, copy_file, copy_parent_path, copy_wildcards, dockerfile_specific_ignore,
    dockerignore, err_add_url, err_bad_chmod, err_bad_output, err_chown_unknown_user,
    err_copy_from_later_stage, err_copy_one_arg, err_copy_to_non_dir, err_dest_dir_missing,
    err_from_registry_image, err_instruction_before_from, err_missing_source,
    err_multiple_sources_file_dest, err_output_missing_dest, err_platform_mismatch,
    err_run_without_shell, err_source_dockerignored, err_target_not_found,
    err_unknown_instruction, err_unterminated_heredoc, err_unwritable_dest, escape_directive,
    hardlinks, healthcheck_none, heredoc_copy, line_continuations, long_names, metadata_all,
    metadata_only, metadata_variables, multistage_copy_from, onbuild_triggers,
    prune_unused_stages, shell_form, symlink_outside_context, tags_recorded, target_stage,
    user_workdir_owner, var_modifiers, workdir_create,
}
